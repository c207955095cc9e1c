"""Idempotency before bytes: uploads that take the request's idempotency key, and presigned
uploads, against real Redis and moto's S3 server."""

from __future__ import annotations

import base64
import io
import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import dramatiq
import pytest
import requests

from jobplatform.publish import InvalidJob, Publisher, PublishReceipt, UploadTicket
from jobplatform.settings import Settings
from schemas import EncodeVideo, ImportRoster
from tests.jobplatform.conftest import drain


class Untouchable(io.RawIOBase):
    """A request body that must not be read: reading it fails the test."""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        raise AssertionError("the retry read the upload's bytes")


def uploads(publisher: Publisher, tenant_id: int = 7) -> list[str]:
    listed = publisher.s3.list_objects_v2(Bucket=publisher.settings.s3.bucket,
                                          Prefix=f"tenants/{tenant_id}/uploads/")
    return [obj["Key"] for obj in listed.get("Contents", [])]


def handle_upload_request(publisher: Publisher, body: io.RawIOBase | io.BytesIO,
                          idempotency_key: str) -> PublishReceipt:
    """An API handler as the README shows it: upload with the key, then publish with it."""
    key = publisher.upload(body, tenant_id=7, kind="video", filename="lecture.mp4",
                           idempotency_key=idempotency_key)
    job = EncodeVideo(tenant_id=7, video_id=uuid.uuid4(), source_key=key)
    return publisher.publish(job, idempotency_key=idempotency_key)


def test_retried_request_uploads_nothing_and_gets_the_first_receipt(
    publisher: Publisher, bus: dramatiq.Broker, bus_settings: Settings
) -> None:
    # Given a request that uploaded its video and published the job
    first = handle_upload_request(publisher, io.BytesIO(b"\x00video"), "req-1")

    # When the client retries it with the same idempotency key
    again = handle_upload_request(publisher, Untouchable(), "req-1")

    # Then nothing of the body is read, nothing stored twice, nothing enqueued twice
    assert again.duplicate
    assert (again.job_id, again.source_key) == (first.job_id, first.source_key)
    assert first.source_key is not None
    assert uploads(publisher) == [first.source_key]
    assert len(drain(bus, bus_settings.queue_video)) == 1


def test_retry_after_the_upload_but_before_the_publish_reuses_the_stored_bytes(
    publisher: Publisher, bus: dramatiq.Broker, bus_settings: Settings
) -> None:
    # Given a first attempt that stored its upload and then died before publishing
    key = publisher.upload(io.BytesIO(b"sheet"), 7, "roster", "roster.xlsx",
                           idempotency_key="req-2")

    # When the retry comes
    reservation = publisher.reserve_upload(7, "roster", "roster.xlsx", idempotency_key="req-2")
    again = publisher.upload(Untouchable(), 7, "roster", "roster.xlsx", idempotency_key="req-2")
    receipt = publisher.publish(
        ImportRoster(tenant_id=7, import_id=uuid.uuid4(), lecture_id=1, source_key=again,
                     filename="roster.xlsx"), idempotency_key="req-2")

    # Then it finds the stored object and publishes for real, once
    assert (reservation.source_key, reservation.uploaded, reservation.needs_upload) == (
        key, True, False)
    assert again == key
    assert not receipt.duplicate
    assert receipt.source_key == key
    assert uploads(publisher) == [key]
    assert len(drain(bus, bus_settings.queue_ai)) == 1


def test_retry_after_a_failed_upload_stores_under_the_reserved_key(
    publisher: Publisher,
) -> None:
    # Given a first attempt that reserved the key but never stored the bytes
    reserved = publisher.reserve_upload(7, "video", "a.mp4", idempotency_key="req-3")
    assert reserved.needs_upload

    # When the retry uploads (under another filename, even)
    key = publisher.upload(io.BytesIO(b"bytes"), 7, "video", "b.mp4", idempotency_key="req-3")

    # Then the bytes go to the first attempt's key: no orphan
    assert key == reserved.source_key
    assert key.endswith("/a.mp4")
    assert uploads(publisher) == [key]


def test_concurrent_twins_share_one_key(publisher: Publisher) -> None:
    with ThreadPoolExecutor(8) as pool:
        keys = set(pool.map(
            lambda _: publisher.reserve_upload(7, "video", "a.mp4",
                                               idempotency_key="twin").source_key,
            range(16)))

    assert len(keys) == 1


def test_an_upload_key_is_reserved_for_one_kind(publisher: Publisher) -> None:
    publisher.reserve_upload(7, "video", "a.mp4", idempotency_key="req-4")

    with pytest.raises(InvalidJob, match=r"'req-4' was used for a video upload .* not a roster"):
        publisher.upload(io.BytesIO(b""), 7, "roster", "a.xlsx", idempotency_key="req-4")
    with pytest.raises(InvalidJob, match="idempotency_key: must be 1 to 255 characters"):
        publisher.reserve_upload(7, "video", "a.mp4", idempotency_key="has space")
    # Without a key every upload gets a key of its own.
    one = publisher.reserve_upload(7, "video", "a.mp4")
    assert one.source_key != publisher.reserve_upload(7, "video", "a.mp4").source_key


def test_presigned_put_upload_then_publish(
    publisher: Publisher, bus: dramatiq.Broker, bus_settings: Settings
) -> None:
    # Given a ticket for a client that uploads straight to S3
    ticket = publisher.presign_upload(7, "video", "강의.mp4", idempotency_key="req-5")
    assert (ticket.method, ticket.headers["Content-Type"]) == ("PUT", "video/mp4")
    assert ticket.url is not None

    # When the client PUTs its file, and the API publishes the job
    done = requests.put(ticket.url, data=b"\x00clip", headers=ticket.headers, timeout=30)
    done.raise_for_status()
    retry_before_publish = publisher.presign_upload(7, "video", "x.mp4",
                                                    idempotency_key="req-5")
    receipt = publisher.publish(
        EncodeVideo(tenant_id=7, video_id=uuid.uuid4(), source_key=ticket.source_key),
        idempotency_key="req-5")
    retry_after_publish = publisher.presign_upload(7, "video", "x.mp4",
                                                   idempotency_key="req-5")

    # Then the object is in S3 as an upload of the API would be, and retries get no URL
    obj = publisher.s3.get_object(Bucket=bus_settings.s3.bucket, Key=ticket.source_key)
    assert obj["Body"].read() == b"\x00clip"
    assert (obj["ContentType"], obj["Metadata"]) == ("video/mp4", {"kind": "video"})
    assert ticket.source_key.startswith("tenants/7/uploads/")
    assert (retry_before_publish.url, retry_before_publish.uploaded) == (None, True)
    assert retry_before_publish.source_key == ticket.source_key
    assert retry_after_publish.url is None
    assert retry_after_publish.receipt is not None
    assert retry_after_publish.receipt.job_id == receipt.job_id
    assert retry_after_publish.receipt.duplicate
    assert receipt.source_key == ticket.source_key
    assert len(drain(bus, bus_settings.queue_video)) == 1


def post(ticket: UploadTicket, body: bytes) -> requests.Response:
    assert ticket.url is not None
    return requests.post(ticket.url, data=ticket.fields, files={"file": ("f", body)},
                         timeout=30)


def test_presigned_post_upload_keeps_to_its_size_limit(
    publisher: Publisher, bus_settings: Settings
) -> None:
    ticket = publisher.presign_upload(7, "roster", "roster.xlsx", method="POST", max_bytes=64)

    stored = post(ticket, b"roster bytes")

    assert stored.status_code in (200, 201, 204), stored.text
    obj = publisher.s3.get_object(Bucket=bus_settings.s3.bucket, Key=ticket.source_key)
    assert obj["Body"].read() == b"roster bytes"
    assert obj["Metadata"] == {"kind": "roster"}
    assert ticket.fields["key"] == ticket.source_key
    assert uploads(publisher) == [ticket.source_key]
    # S3 enforces the signed policy's conditions (moto's server stores without checking them).
    policy = json.loads(base64.b64decode(ticket.fields["policy"]))
    assert ["content-length-range", 1, 64] in policy["conditions"]
    assert {"x-amz-meta-kind": "roster"} in policy["conditions"]


def test_presigned_defaults_and_refusals(publisher: Publisher, bus_settings: Settings) -> None:
    video = publisher.presign_upload(7, "video", "a.mp4")
    roster = publisher.presign_upload(7, "roster", "a.xlsx", method="POST")

    assert video.max_bytes == bus_settings.video.max_source_bytes
    assert roster.max_bytes == bus_settings.roster.max_file_bytes
    with pytest.raises(InvalidJob, match="method: must be 'PUT' or 'POST'"):
        publisher.presign_upload(7, "video", "a.mp4", method="GET")  # type: ignore[arg-type]
    with pytest.raises(InvalidJob, match="expires_in_s: must be 1 to 604800"):
        publisher.presign_upload(7, "video", "a.mp4", expires_in_s=0)
    with pytest.raises(InvalidJob, match="tenant_id: must be a positive integer"):
        publisher.presign_upload(0, "video", "a.mp4")


def test_upload_from_a_path_with_a_key(publisher: Publisher, tmp_path: Path) -> None:
    path = tmp_path / "lecture.mp4"
    path.write_bytes(b"\x00file")

    key = publisher.upload(path, 7, "video", path.name, idempotency_key="req-6")
    path.unlink()  # a retry must not need the file any more
    again = publisher.upload(path, 7, "video", path.name, idempotency_key="req-6")

    assert again == key
    assert uploads(publisher) == [key]
