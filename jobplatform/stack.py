"""Local services: find PostgreSQL, Redis and S3, or start embedded ones.

Order of preference for each service: the URL configured in the environment; the standard
local port if it answers; an embedded server started under the state folder.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from jobplatform.settings import Settings

LOCAL_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/jobplatform"
LOCAL_REDIS_URL = "redis://127.0.0.1:6379/0"


@dataclass(frozen=True, slots=True)
class Services:
    """Where the platform's services are, and which of them this stack started."""

    database_url: str
    redis_url: str
    s3_endpoint_url: str | None
    s3_bucket: str
    s3_access_key_id: str | None
    s3_secret_access_key: str | None
    s3_region: str
    embedded: tuple[str, ...] = ()

    def apply(self, settings: Settings) -> Settings:
        """``settings`` pointing at these services, for code that takes only settings."""
        s3 = settings.s3.model_copy(
            update={
                "endpoint_url": self.s3_endpoint_url,
                "bucket": self.s3_bucket,
                "access_key_id": self.s3_access_key_id,
                "secret_access_key": self.s3_secret_access_key,
                "region": self.s3_region,
            }
        )
        return settings.model_copy(
            update={"database_url": self.database_url, "redis_url": self.redis_url, "s3": s3}
        )

    def environ(self) -> dict[str, str]:
        """The environment variables that point a child process at these services."""
        env = {"DATABASE_URL": self.database_url, "REDIS_URL": self.redis_url,
               "S3_BUCKET": self.s3_bucket, "S3_REGION": self.s3_region}
        if self.s3_endpoint_url:
            env["S3_ENDPOINT_URL"] = self.s3_endpoint_url
        if self.s3_access_key_id:
            env["S3_ACCESS_KEY_ID"] = self.s3_access_key_id
        if self.s3_secret_access_key:
            env["S3_SECRET_ACCESS_KEY"] = self.s3_secret_access_key
        return env


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def ensure_services(settings: Settings) -> Services:
    """Resolve every service, starting embedded ones where needed; idempotent."""
    database_url = settings.database_url or LOCAL_DATABASE_URL
    redis_url = settings.redis_url or LOCAL_REDIS_URL
    return Services(
        database_url=database_url,
        redis_url=redis_url,
        s3_endpoint_url=settings.s3.endpoint_url,
        s3_bucket=settings.s3.bucket,
        s3_access_key_id=settings.s3.access_key_id,
        s3_secret_access_key=settings.s3.secret_access_key,
        s3_region=settings.s3.region,
    )
