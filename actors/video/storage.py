"""S3 for the video actor: key layout, a size-limited download, upload and stale-object cleanup.

S3 faults are translated here, once: connection failures, timeouts, throttling and 5xx become
:class:`TransientJobError` (retried); a missing object or a refused request becomes
:class:`JobError` (reported as failed).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Final
from uuid import UUID

from botocore.exceptions import BotoCoreError, ClientError, ConnectionError, HTTPClientError

from actors.video.hls import MASTER_PLAYLIST, content_type
from jobplatform.errors import JobError, TransientJobError
from schemas.jobs import check_key

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

CHUNK_BYTES: Final = 1024 * 1024
UPLOAD_THREADS: Final = 8
_TRANSIENT_CODES: Final = frozenset({
    "InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "Throttling",
    "ThrottlingException", "RequestTimeTooSkewed", "500", "502", "503", "504",
})


def tenant_prefix(tenant_id: int) -> str:
    return f"tenants/{tenant_id}/"


def output_prefix(tenant_id: int, video_id: UUID) -> str:
    """Where a video's HLS output lives: ``tenants/<tenant>/videos/<video>/hls/``."""
    return f"{tenant_prefix(tenant_id)}videos/{video_id}/hls/"


def check_source_key(key: str, tenant_id: int, video_id: UUID) -> str:
    """The source key if it is safe and the tenant's own; else :class:`JobError`."""
    try:
        check_key(key)
    except ValueError as exc:
        raise JobError(f"source key {key!r} is not allowed: {exc}") from exc
    if not key.startswith(tenant_prefix(tenant_id)):
        raise JobError(f"source key {key!r} is outside tenant {tenant_id}'s folder")
    if key.startswith(output_prefix(tenant_id, video_id)):
        raise JobError(f"source key {key!r} is inside the video's own output folder")
    return key


@contextmanager
def s3_errors(action: str) -> Iterator[None]:
    """Translate S3 faults raised while doing ``action`` into the platform's job errors."""
    try:
        yield
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if code in _TRANSIENT_CODES or status >= 500:
            raise TransientJobError(f"S3 unavailable while {action}: {code or status}") from exc
        if code in ("404", "NoSuchKey", "NotFound"):
            raise JobError(f"S3 object not found while {action}") from exc
        message = error.get("Message") or code or status
        raise JobError(f"S3 refused {action}: {message}") from exc
    except (ConnectionError, HTTPClientError) as exc:
        raise TransientJobError(f"S3 unavailable while {action}: {exc}") from exc
    except BotoCoreError as exc:
        raise TransientJobError(f"S3 error while {action}: {exc}") from exc


def download(
    s3: S3Client,
    bucket: str,
    key: str,
    dest: Path,
    max_bytes: int,
    on_bytes: Callable[[int, int], None] | None = None,
) -> int:
    """Stream ``key`` to ``dest``, refusing empty sources and sources over ``max_bytes``."""
    with s3_errors(f"reading the source {key}"):
        size = s3.head_object(Bucket=bucket, Key=key)["ContentLength"]
        if size == 0:
            raise JobError("the source file is empty (0 bytes)")
        if size > max_bytes:
            raise JobError(_too_large(size, max_bytes))
        body = s3.get_object(Bucket=bucket, Key=key)["Body"]
        done = 0
        try:
            with dest.open("wb") as out:
                for chunk in body.iter_chunks(CHUNK_BYTES):
                    done += len(chunk)
                    if done > max_bytes:
                        raise JobError(_too_large(done, max_bytes))
                    out.write(chunk)
                    if on_bytes:
                        on_bytes(done, size)
        finally:
            body.close()
    if done == 0:
        raise JobError("the source file is empty (0 bytes)")
    return done


def _too_large(size: int, limit: int) -> str:
    return f"the source file is {_mib(size)}, larger than the limit of {_mib(limit)}"


def _mib(n: int) -> str:
    return f"{n / 1024**2:.1f} MiB" if n < 1024**3 else f"{n / 1024**3:.2f} GiB"


def upload_tree(
    s3: S3Client, bucket: str, folder: Path, prefix: str,
    on_file: Callable[[int, int], None] | None = None,
) -> set[str]:
    """Upload every file under ``folder`` to ``prefix``; the master playlist goes last.

    Returns the keys written. Files whose type is not part of HLS output are refused.
    """
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    plan = [(p, check_key(prefix + p.relative_to(folder).as_posix())) for p in files]
    for path, _ in plan:
        content_type(path.name)
    first = [item for item in plan if item[0].name != MASTER_PLAYLIST]
    last = [item for item in plan if item[0].name == MASTER_PLAYLIST]
    total = len(plan)
    done = 0

    def put(item: tuple[Path, str]) -> None:
        path, key = item
        with s3_errors(f"uploading {key}"):
            s3.upload_file(
                str(path), bucket, key, ExtraArgs={"ContentType": content_type(path.name)}
            )

    with ThreadPoolExecutor(UPLOAD_THREADS) as pool:
        for _ in pool.map(put, first):
            done += 1
            if on_file:
                on_file(done, total)
    for item in last:
        put(item)
        done += 1
        if on_file:
            on_file(done, total)
    return {key for _, key in plan}


def remove_stale(s3: S3Client, bucket: str, prefix: str, keep: set[str]) -> list[str]:
    """Delete objects under ``prefix`` that are not in ``keep`` (left by an earlier run)."""
    stale: list[str] = []
    with s3_errors(f"listing {prefix}"):
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            stale += [o["Key"] for o in page.get("Contents", []) if o["Key"] not in keep]
    for start in range(0, len(stale), 1000):
        batch = stale[start:start + 1000]
        with s3_errors(f"removing stale objects under {prefix}"):
            result = s3.delete_objects(
                Bucket=bucket,
                Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True},
            )
        if result.get("Errors"):
            first = result["Errors"][0]
            raise TransientJobError(
                f"S3 could not delete {first.get('Key')}: {first.get('Message')}"
            )
    return stale
