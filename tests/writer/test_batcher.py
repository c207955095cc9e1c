from __future__ import annotations

import uuid

import pytest
from dramatiq.broker import MessageProxy

from jobplatform.auth import Keyring
from jobplatform.broker import WRITE_INTENT, make_message
from jobplatform.kinds import load_registry
from schemas.intents import encode_intent
from tests.writer.intent_factory import chunk, queued, student
from writer.batcher import Batch, BatchSizer, Limits
from writer.lanes import Item, inspect_message

KEYRING = Keyring({"test": "t" * 32})


def _item(payload: object, queue: str = "writes.fast", actor: str = WRITE_INTENT,
          max_bytes: int = 1 << 20) -> Item:
    message = KEYRING.sign(make_message(queue, actor, {}).copy(args=(payload,)))
    return inspect_message(MessageProxy(message), queue, max_bytes=max_bytes,
                           registry=load_registry(), keyring=KEYRING)


def _roster(rows: int) -> Item:
    intent = chunk(uuid.uuid4(), 0, [student(n) for n in range(rows)])
    return _item(encode_intent(intent), "writes.bulk")


def test_inspect_decodes_an_intent_and_counts_roster_rows() -> None:
    video = _item(encode_intent(queued(uuid.uuid4())))
    roster = _roster(7)
    assert video.reason is None
    assert video.intent is not None
    assert video.rows == 1
    assert roster.rows == 7
    assert roster.size == len(roster.body.encode())


def test_inspect_names_what_is_wrong() -> None:
    good = encode_intent(queued(uuid.uuid4()))
    assert "not JSON" in str(_item("{oops").reason)
    assert "wrong actor 'encode_video'" in str(_item(good, actor="encode_video").reason)
    assert "exceeds WRITER_MAX_INTENT_BYTES (10)" in str(_item(good, max_bytes=10).reason)
    missing = {k: v for k, v in good.items() if k != "tenant_id"}
    assert "tenant_id" in str(_item(missing).reason)
    described = _item(missing).describe()
    assert described["intent_id"] == uuid.UUID(good["intent_id"])
    assert described["kind"] == "video.queued"
    assert described["tenant_id"] is None


def test_batch_limits_rows_and_always_takes_one_item() -> None:
    limits = Limits(intents=10, rows=1000, bytes=1 << 30)
    batch = Batch()
    big = _roster(1500)
    assert batch.add(big, limits, bulk_limits=limits)  # alone, over the row limit
    assert not batch.add(_roster(1), limits, bulk_limits=limits)
    assert batch.full(limits)


def test_bulk_share_leaves_room_for_fast_intents() -> None:
    limits = Limits(intents=10, rows=10_000, bytes=1 << 30)
    bulk_limits = limits.scaled(0.5)
    batch = Batch()
    fast = [_item(encode_intent(queued(uuid.uuid4()))) for _ in range(2)]
    assert batch.add_all(fast, limits) == []
    bulk = [_roster(3) for _ in range(8)]
    left = batch.add_all(bulk, limits, bulk_limits=bulk_limits)
    assert len(left) == 3  # five bulk intents: half of the batch
    assert batch.bulk.intents == 5
    assert batch.fast_count == 2
    more_fast = [_item(encode_intent(queued(uuid.uuid4()))) for _ in range(4)]
    assert len(batch.add_all(more_fast, limits)) == 1
    assert len(batch) == 10


def test_rejected_items_do_not_count_rows() -> None:
    limits = Limits(intents=10, rows=1, bytes=1 << 30)
    batch = Batch()
    assert batch.add(_item(encode_intent(queued(uuid.uuid4()))), limits)
    assert batch.add(_item("{bad"), limits)
    assert [i.reason is None for i in batch.items] == [True, False]
    assert len(batch.valid) == 1
    assert len(batch.rejected) == 1


def _run_sizer(sizer: BatchSizer, fixed_ms: float, per_row_ms: float, batches: int) -> list[int]:
    """Feed ``sizer`` batches of its own cap on a database where a batch takes
    ``fixed_ms + per_row_ms * rows``; the caps it chose."""
    caps = []
    for _ in range(batches):
        rows = sizer.rows
        sizer.observe(rows, fixed_ms + per_row_ms * rows)
        caps.append(sizer.rows)
    return caps


def test_sizer_starts_at_the_floor_and_settles_where_a_batch_fits_the_target() -> None:
    sizer = BatchSizer(80, 100, 5000)
    assert (sizer.rows, sizer.ms_per_row) == (100, None)
    # A big instance: (80 - 5) / 0.03 = 2,500 rows fit
    caps = _run_sizer(sizer, 5, 0.03, 40)
    assert caps[0] >= 1000  # 100 rows in 8 ms: room for ten times as many
    assert caps[-1] == pytest.approx(2500, rel=0.03)
    # A small one: 2,000 rows take 605 ms; (80 - 5) / 0.3 = 250 rows fit
    small = _run_sizer(BatchSizer(80, 100, 2000), 5, 0.3, 40)
    assert small[-1] == pytest.approx(250, rel=0.03)
    assert all(100 <= c <= 2000 for c in small)


def test_sizer_follows_the_database_when_it_gets_slower_and_faster() -> None:
    sizer = BatchSizer(80, 100, 5000)
    _run_sizer(sizer, 5, 0.03, 40)
    assert _run_sizer(sizer, 5, 0.3, 40)[-1] == pytest.approx(250, rel=0.03)
    assert _run_sizer(sizer, 5, 0.03, 40)[-1] == pytest.approx(2500, rel=0.03)


def test_sizer_keeps_to_its_bounds() -> None:
    slow = BatchSizer(80, 100, 2000)
    assert _run_sizer(slow, 200, 1.0, 5)[-1] == 100  # the fixed cost alone exceeds the target
    fast = BatchSizer(80, 100, 2000)
    assert _run_sizer(fast, 1, 0.001, 5)[-1] == 2000
    assert BatchSizer(80, 500, 200).min_rows == 200
    with pytest.raises(ValueError, match="target_ms"):
        BatchSizer(0, 100, 2000)


def test_a_lone_status_change_barely_moves_the_cap() -> None:
    sizer = BatchSizer(80, 100, 5000)
    settled = _run_sizer(sizer, 5, 0.03, 40)[-1]
    # One status intent (one row) whose transaction took 5 ms: 5 ms a row on its own
    sizer.observe(1, 5.0)
    assert sizer.rows >= 0.7 * settled


def _run_noisy(sizer: BatchSizer, per_row_ms: float, batches: int) -> list[float]:
    """Like :func:`_run_sizer` on a database where every fifth batch takes twice as long;
    the transaction times."""
    times = []
    for n in range(batches):
        ms = per_row_ms * sizer.rows * (2.0 if n % 5 == 4 else 1.0)
        sizer.observe(sizer.rows, ms)
        times.append(ms)
    return times


def test_sizer_keeps_the_slow_batches_near_the_target_not_the_mean() -> None:
    upper = BatchSizer(80, 100, 20_000)
    times = _run_noisy(upper, 0.03, 200)[100:]
    mean_only = BatchSizer(80, 100, 20_000, spread=0)
    mean_times = _run_noisy(mean_only, 0.03, 200)[100:]
    # On the mean alone, the slow batches run far over the target (the mean sits under it)
    assert max(mean_times) > 1.4 * 80
    # On the upper estimate they run over by much less, the cap smaller by the spread it saw
    assert max(times) < 1.4 * 80
    assert max(times) < 0.85 * max(mean_times)
    assert upper.excess > 0.1
    assert upper.rows < 0.8 * mean_only.rows


def test_spread_rejects_a_negative_value() -> None:
    with pytest.raises(ValueError, match="spread"):
        BatchSizer(80, 100, 2000, spread=-1)
