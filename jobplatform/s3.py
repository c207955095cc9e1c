"""The S3 client, configured from settings, with timeouts and standard retries."""

from __future__ import annotations

from typing import TYPE_CHECKING

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from jobplatform.settings import Settings

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


def s3_client(settings: Settings) -> S3Client:
    """The S3 client of ``settings``; an ``https`` endpoint's certificate is checked against
    ``S3_CA_BUNDLE`` when set (else the system's authorities, as boto3 does)."""
    s3 = settings.s3
    client: S3Client = boto3.client(
        "s3",
        endpoint_url=s3.endpoint_url,
        verify=str(s3.ca_bundle) if s3.ca_bundle is not None else None,
        region_name=s3.region,
        aws_access_key_id=s3.access_key_id,
        aws_secret_access_key=s3.secret_access_key,
        config=Config(
            connect_timeout=5,
            read_timeout=60,
            retries={"max_attempts": 4, "mode": "standard"},
            s3={"addressing_style": "path"},
        ),
    )
    return client


def ensure_bucket(client: S3Client, bucket: str) -> None:
    """Create ``bucket`` unless it exists (for development stacks and tests)."""
    try:
        client.head_bucket(Bucket=bucket)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
            raise
        client.create_bucket(Bucket=bucket)
