"""The write-intent log on disk: segments, rotation, compression, torn tails, merging, filters."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import boto3
import pytest

from schemas import RosterChunk, RosterStatus, VideoQueued
from schemas.intents import AnyIntent, intent_json
from tests.writer.conftest import wait_until
from tests.writer.log_samples import at, phone, roster_import, student, video_lifecycle
from writer.intentlog import (
    IntentLog,
    LogFilter,
    LogFormatError,
    LogReader,
    S3Shipper,
    encode_record,
)
from writer.intentlog import log as log_module
from writer.intentlog import segment as segment_module


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def make_log(tmp_path: Path) -> Iterator[Callable[..., IntentLog]]:
    opened: list[IntentLog] = []

    def make(folder: Path | None = None, **kwargs: object) -> IntentLog:
        log = IntentLog(folder or tmp_path / "log", **kwargs)  # type: ignore[arg-type]
        opened.append(log)
        return log

    yield make
    for log in opened:
        log.close()


def seqs(reader: LogReader, flt: LogFilter | None = None) -> list[int]:
    return [r.seq for r in reader.records(flt)]


def test_each_batch_is_one_durable_line_with_seq_writer_time_and_intents(
    make_log: Callable[..., IntentLog], tmp_path: Path
) -> None:
    log = make_log(writer_id="host-a:41")
    first = video_lifecycle(7, 0)
    second = roster_import(7, 900, [student(n) for n in range(3)], 10)
    log.append(5, first)
    log.append(6, second)

    # Before close: the open segment holds two complete lines, named after batch 5.
    (segment,) = (tmp_path / "log").iterdir()
    assert segment.name == "00000000000000000005-host-a-41.jsonl"
    lines = segment.read_bytes().split(b"\n")
    assert lines[-1] == b""
    body = json.loads(lines[0])
    assert (body["seq"], body["writer"], body["n"]) == (5, "host-a:41", 3)
    assert [i["kind"] for i in body["intents"]] == ["video.queued", "video.processing",
                                                    "video.ready"]

    records = list(LogReader([tmp_path / "log"]).records())
    assert [r.seq for r in records] == [5, 6]
    assert list(records[0].intents) == first
    assert list(records[1].intents) == second
    assert records[1].writer == "host-a:41"
    assert records[1].at.tzinfo is not None


def test_close_compresses_segments_and_leaves_no_open_file(
    make_log: Callable[..., IntentLog], tmp_path: Path
) -> None:
    log = make_log(writer_id="w:1")
    intents = video_lifecycle(1, 0)
    log.append(1, intents)
    open_bytes = (tmp_path / "log" / "00000000000000000001-w-1.jsonl").read_bytes()
    log.close()

    names = sorted(p.name for p in (tmp_path / "log").iterdir())
    assert names == ["00000000000000000001-w-1.jsonl.gz"]
    with gzip.open(tmp_path / "log" / names[0], "rb") as stream:
        assert stream.read() == open_bytes
    assert [list(r.intents) for r in LogReader([tmp_path / "log"]).records()] == [intents]
    assert log.get_stats()["segments_closed"] == 1
    with pytest.raises(RuntimeError, match="closed"):
        log.append(2, intents)


def test_rotation_by_size_starts_a_segment_named_after_its_first_batch(
    make_log: Callable[..., IntentLog], tmp_path: Path
) -> None:
    one_batch = len(encode_record(1, "w:1", at(0), video_lifecycle(1, 0)))
    log = make_log(writer_id="w:1", segment_bytes=2 * one_batch)
    for seq in range(1, 8):
        log.append(seq, video_lifecycle(1, seq))
    log.close()

    names = sorted(p.name for p in (tmp_path / "log").iterdir())
    # Two batches fill a segment; the third rotates: segments start at 1, 3, 5, 7.
    assert [n.split("-")[0] for n in names] == [f"{s:020d}" for s in (1, 3, 5, 7)]
    assert all(n.endswith(".jsonl.gz") for n in names)
    assert seqs(LogReader([tmp_path / "log"])) == list(range(1, 8))


def test_rotation_by_age_at_append_and_while_idle(
    make_log: Callable[..., IntentLog], tmp_path: Path
) -> None:
    clock = FakeClock()
    log = make_log(writer_id="w:1", segment_age_s=60, clock=clock)
    log.append(1, video_lifecycle(1, 0))
    clock.now += 59
    log.append(2, video_lifecycle(1, 1))
    clock.now += 1
    log.append(3, video_lifecycle(1, 2))  # the first segment is 60 s old: a new one
    clock.now += 60
    log.rotate_if_old()  # what the idle check does
    log.flush(timeout=10)

    closed = sorted(p.name for p in log.closed_segments)
    assert closed == ["00000000000000000001-w-1.jsonl.gz", "00000000000000000003-w-1.jsonl.gz"]
    assert not list((tmp_path / "log").glob("*.jsonl"))


def test_idle_segment_is_closed_by_the_background_check(
    make_log: Callable[..., IntentLog],
) -> None:
    log = make_log(writer_id="w:1", segment_age_s=0.2)
    log.append(1, video_lifecycle(1, 0))
    wait_until(lambda: len(log.closed_segments) == 1)
    log.append(2, video_lifecycle(1, 1))
    assert log.get_stats()["segments_opened"] == 2


def test_a_batch_number_going_backwards_starts_a_new_segment(
    make_log: Callable[..., IntentLog], tmp_path: Path
) -> None:
    log = make_log(writer_id="w:1")
    log.append(10, video_lifecycle(1, 0))
    log.append(4, video_lifecycle(1, 1))
    log.close()
    assert seqs(LogReader([tmp_path / "log"])) == [4, 10]


def write_segment(path: Path, seqs_: list[int], tail: bytes = b"") -> list[list[AnyIntent]]:
    batches = [video_lifecycle(1, s) for s in seqs_]
    data = b"".join(encode_record(s, "w:9", at(s), b) for s, b in zip(seqs_, batches,
                                                                         strict=True))
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(data + tail))
    else:
        path.write_bytes(data + tail)
    return batches


def test_torn_last_line_ends_the_segment_and_is_reported(tmp_path: Path) -> None:
    whole = encode_record(4, "w:9", at(4), video_lifecycle(1, 4))
    path = tmp_path / "00000000000000000001-w-9.jsonl"
    batches = write_segment(path, [1, 2, 3], tail=whole[: len(whole) // 2])

    reader = LogReader([path])
    records = list(reader.records())
    assert [list(r.intents) for r in records] == batches
    (note,) = reader.notes
    assert path.name in note
    assert "truncated at line 4" in note


def test_a_last_line_that_does_not_parse_is_a_torn_tail_too(tmp_path: Path) -> None:
    path = tmp_path / "00000000000000000001-w-9.jsonl"
    write_segment(path, [1, 2], tail=b"\x00\x00\x00\n")  # a zero-filled block after a crash
    reader = LogReader([path])
    assert seqs(reader) == [1, 2]
    assert "truncated at line 3" in reader.notes[0]


def test_a_truncated_compressed_segment_is_read_up_to_where_it_ends(tmp_path: Path) -> None:
    full = tmp_path / "full" / "00000000000000000001-w-9.jsonl.gz"
    write_segment(full, list(range(1, 40)))
    cut = tmp_path / "cut" / full.name
    cut.parent.mkdir()
    cut.write_bytes(full.read_bytes()[: full.stat().st_size * 2 // 3])

    reader = LogReader([cut])
    got = seqs(reader)
    assert got == list(range(1, len(got) + 1))
    assert 0 < len(got) < 39
    assert "truncated" in reader.notes[0]


def test_a_bad_line_before_the_end_is_an_error_naming_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "00000000000000000001-w-9.jsonl"
    write_segment(path, [1])
    with path.open("ab") as stream:
        stream.write(b'{"seq": 2, "writer": "w:9", "at": "2024-05-01T09:00:00Z", "intents": '
                     b'[{"kind": "video.nope"}]}\n')
        stream.write(encode_record(3, "w:9", at(3), video_lifecycle(1, 3)))
    with pytest.raises(LogFormatError, match=rf"{path.name}:2: intents\[0\]"):
        list(LogReader([path]).records())


def test_merge_across_an_active_and_a_standby_folder_in_batch_order(tmp_path: Path) -> None:
    # Given the active writer logged 1-3, the standby took over for 4-6, then 7-8 again
    active, standby = tmp_path / "active", tmp_path / "standby"
    write_segment(active / "00000000000000000001-a-1.jsonl.gz", [1, 2, 3])
    write_segment(active / "00000000000000000007-a-2.jsonl", [7, 8])
    write_segment(standby / "00000000000000000004-b-1.jsonl.gz", [4, 5, 6])
    write_segment(standby / "00000000000000000009-b-1.jsonl", [9, 12])
    write_segment(active / "00000000000000000010-a-3.jsonl", [10, 11, 13])

    assert seqs(LogReader([active, standby])) == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]
    # The same segments given twice (a folder and its shipped copy) yield each batch once
    copy = tmp_path / "copy"
    write_segment(copy / "renamed-by-hand.jsonl", [4, 5, 6])
    assert seqs(LogReader([standby, active, copy])) == list(range(1, 14))


def test_a_segment_both_open_and_compressed_is_read_once(tmp_path: Path) -> None:
    # A crash between writing the compressed copy and removing the open file
    folder = tmp_path / "log"
    write_segment(folder / "00000000000000000001-a-1.jsonl", [1, 2])
    write_segment(folder / "00000000000000000001-a-1.jsonl.gz", [1, 2])
    reader = LogReader([folder])
    assert [s.path.name for s in reader.segments()] == ["00000000000000000001-a-1.jsonl.gz"]
    assert seqs(reader) == [1, 2]


def test_missing_source_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such log file or folder"):
        LogReader([tmp_path / "nope"]).segments()


def test_filters_until_tenant_kind_and_entity(
    make_log: Callable[..., IntentLog], tmp_path: Path
) -> None:
    video_a = video_lifecycle(1, 0)
    video_b = video_lifecycle(2, 0, fail=True)
    roster = roster_import(1, 700, [student(n) for n in range(120)], 5)
    log = make_log(writer_id="w:1")
    log.append(1, video_a[:2] + video_b[:1])
    log.append(2, roster[:2])
    log.append(3, roster[2:] + video_b[1:])
    log.append(4, video_a[2:])
    log.close()
    reader = LogReader([tmp_path / "log"])

    def kinds(flt: LogFilter) -> list[tuple[int, list[str]]]:
        return [(r.seq, [i.kind for i in r.intents]) for r in reader.records(flt)]

    assert seqs(reader, LogFilter(until=2)) == [1, 2]
    assert seqs(reader, LogFilter(since=3)) == [3, 4]
    assert kinds(LogFilter(tenant=2)) == [
        (1, ["video.queued"]), (3, ["video.processing", "video.failed"])]
    assert kinds(LogFilter(kinds=frozenset({"video.ready", "roster.status"}))) == [
        (2, ["roster.status"]), (3, ["roster.status"]), (4, ["video.ready"])]
    assert kinds(LogFilter(kinds=frozenset({"roster"}), until=2)) == [
        (2, ["roster.status", "roster.chunk"])]
    assert isinstance(video_a[0], VideoQueued)
    assert isinstance(roster[0], RosterStatus)
    video_id = str(video_a[0].video_id).upper()  # ids match whatever their case
    assert kinds(LogFilter(entity=video_id)) == [
        (1, ["video.queued", "video.processing"]), (4, ["video.ready"])]
    import_id = str(roster[0].import_id)
    assert [len(r.intents) for r in reader.records(LogFilter(entity=import_id))] == [2, 3]

    # A phone keeps only that student's row of the chunk that holds it
    (record,) = reader.records(LogFilter(entity=phone(77)))
    (chunk,) = record.intents
    assert isinstance(chunk, RosterChunk)
    assert [r.phone for r in chunk.rows] == [phone(77)]
    assert chunk.chunk_index == 1
    # A parent's phone finds the child's row; combined with another tenant, nothing
    assert [len(r.intents) for r in reader.records(LogFilter(entity=phone(5000)))] == [1]
    assert not list(reader.records(LogFilter(entity=phone(5000), tenant=2)))


def test_a_dead_process_segment_is_closed_by_the_next_log_on_that_folder(
    tmp_path: Path,
) -> None:
    # Given a process that appended three batches and was killed (kill -9) with its segment open
    folder = tmp_path / "log"
    script = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from tests.writer.log_samples import video_lifecycle
        from writer.intentlog import IntentLog
        log = IntentLog(Path({str(folder)!r}), writer_id="dead:1")
        for seq in (1, 2, 3):
            log.append(seq, video_lifecycle(1, seq))
        print("ready", flush=True)
        sys.stdin.read()
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, cwd=Path(__file__).parents[2])
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == b"ready\n"
        # While it lives, another log on the folder leaves its segment alone
        alive = IntentLog(folder, writer_id="other:2")
        alive.close()
        assert [p.name for p in folder.glob("*.jsonl")] == ["00000000000000000001-dead-1.jsonl"]
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait()
        if child.stdout is not None:
            child.stdout.close()
        if child.stdin is not None:
            child.stdin.close()

    # When the next log opens the folder, it compresses the orphan; every batch is readable
    successor = IntentLog(folder, writer_id="next:3")
    successor.append(4, video_lifecycle(1, 4))
    successor.close()
    assert successor.get_stats()["recovered"] == 1
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["00000000000000000001-dead-1.jsonl.gz", "00000000000000000004-next-3.jsonl.gz"]
    assert seqs(LogReader([folder])) == [1, 2, 3, 4]


def test_closed_segments_ship_to_s3_and_read_back_from_there(
    make_log: Callable[..., IntentLog], tmp_path: Path, s3_endpoint: str
) -> None:
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    bucket = f"log-{uuid.uuid4().hex[:10]}"
    client.create_bucket(Bucket=bucket)
    one_batch = len(encode_record(1, "w:1", at(0), video_lifecycle(1, 0)))
    log = make_log(writer_id="w:1", segment_bytes=one_batch,
                   shipper=S3Shipper(client, bucket, "prod/intent-log/"))
    batches = [video_lifecycle(1, s) for s in range(3)]
    for seq, batch in enumerate(batches, start=1):
        log.append(seq, batch)
    log.close()

    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"])
    assert keys == [f"prod/intent-log/{s:020d}-w-1.jsonl.gz" for s in (1, 2, 3)]
    assert log.get_stats()["segments_shipped"] == 3

    with LogReader([f"s3://{bucket}/prod/intent-log/"], s3=client) as reader:
        records = list(reader.records())
        assert [list(r.intents) for r in records] == batches
        assert records[0].source == f"s3://{bucket}/{keys[0]}"


def test_a_reused_batch_number_gets_a_segment_of_its_own(
    make_log: Callable[..., IntentLog], tmp_path: Path
) -> None:
    # A database restored from a backup hands out batch numbers already in the log
    first = make_log(writer_id="w:1")
    first.append(1, video_lifecycle(1, 0))
    first.close()
    again = make_log(writer_id="w:1")
    again.append(1, video_lifecycle(1, 1))
    again.close()
    names = sorted(p.name for p in (tmp_path / "log").iterdir())
    assert names == ["00000000000000000001-w-1-1.jsonl.gz", "00000000000000000001-w-1.jsonl.gz"]


def _blocked(folder: Path) -> Path:
    """Make the compression of the segment in ``folder`` fail: its ``.gz`` name is taken by a
    folder (as a full disk would make it fail); returns that folder."""
    (segment,) = folder.glob("*.jsonl")
    blocker = segment.with_name(segment.name + ".gz")
    (blocker / "in-the-way").mkdir(parents=True)
    return blocker


def test_a_failed_compression_is_retried_and_the_segment_shipped_once_it_succeeds(
    make_log: Callable[..., IntentLog], tmp_path: Path, s3_endpoint: str
) -> None:
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    bucket = f"log-{uuid.uuid4().hex[:10]}"
    client.create_bucket(Bucket=bucket)
    folder = tmp_path / "log"
    log = make_log(writer_id="w:1", retry_s=0.05, shipper=S3Shipper(client, bucket, "p"))
    log.append(1, video_lifecycle(1, 0))
    # Given a compression that fails at its last step
    blocker = _blocked(folder)
    log.rotate()
    wait_until(lambda: log.get_stats()["finalize_failures"] >= 2, message="tried twice")
    # Then the segment stays open, nothing half compressed is left, nothing shipped
    assert [p.name for p in folder.glob("*.jsonl")] == ["00000000000000000001-w-1.jsonl"]
    assert list(folder.glob("*.partial*")) == []
    assert log.get_stats()["segments_shipped"] == 0

    # When the cause goes away, the next try compresses and ships it
    shutil.rmtree(blocker)
    log.flush(timeout=10)
    assert sorted(p.name for p in folder.iterdir()) == ["00000000000000000001-w-1.jsonl.gz"]
    assert log.get_stats()["segments_shipped"] == 1
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys == ["p/00000000000000000001-w-1.jsonl.gz"]
    assert seqs(LogReader([folder])) == [1]


def test_a_starting_log_leaves_a_segment_another_live_log_is_closing(
    make_log: Callable[..., IntentLog], tmp_path: Path
) -> None:
    # Given a live log on a shared folder whose rotated segment is not compressed yet
    folder = tmp_path / "log"
    active = make_log(writer_id="active:1", retry_s=0.05)
    active.append(1, video_lifecycle(1, 0))
    blocker = _blocked(folder)
    active.rotate()
    wait_until(lambda: active.get_stats()["finalize_failures"] >= 1, message="a failure")

    # When a second log starts on that folder
    standby = make_log(writer_id="standby:2")

    # Then its recovery leaves that segment to its owner, who finishes it
    assert standby.get_stats()["recovered"] == 0
    shutil.rmtree(blocker)
    active.flush(timeout=10)
    standby.close()
    assert sorted(p.name for p in folder.iterdir()) == ["00000000000000000001-active-1.jsonl.gz"]
    assert seqs(LogReader([folder])) == [1]


def test_a_dead_compressors_partial_file_is_removed_by_the_next_log(tmp_path: Path) -> None:
    folder = tmp_path / "log"
    folder.mkdir()
    (folder / "00000000000000000001-dead-1.jsonl.gz.partial-0123456789ab").write_bytes(b"\x1f")
    (folder / ".0123.creating").write_bytes(b"")
    IntentLog(folder, writer_id="next:2").close()
    assert list(folder.iterdir()) == []


def test_each_thread_appends_what_it_prepared_without_encoding_it_again(
    make_log: Callable[..., IntentLog], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The writer's loop and its fast lane prepare and append on one log, interleaved.
    calls: list[uuid.UUID] = []
    real = intent_json

    def counted(intent: AnyIntent) -> bytes:
        calls.append(intent.intent_id)
        return real(intent)

    monkeypatch.setattr(log_module, "intent_json", counted)
    monkeypatch.setattr(segment_module, "intent_json", counted)
    log = make_log(writer_id="w:1")
    bulk, fast = video_lifecycle(1, 0), video_lifecycle(2, 0)
    prepared, appended = threading.Event(), threading.Event()

    def other() -> None:
        prepared.wait(5)
        log.prepare(fast)
        log.append(2, fast)
        appended.set()

    thread = threading.Thread(target=other)
    thread.start()
    log.prepare(bulk)
    prepared.set()
    assert appended.wait(5)
    log.append(3, bulk)
    thread.join(5)

    assert sorted(calls) == sorted(i.intent_id for i in bulk + fast)  # each encoded once
    assert [list(r.intents) for r in LogReader([tmp_path / "log"]).records()] == [fast, bulk]
