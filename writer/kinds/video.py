"""The video kind's handler: a video's states (queued, processing, ready, failed) in `videos`.

Coalescing: a video's intents in one batch become one row change. The highest by
:meth:`~schemas.BaseIntent.rank` (attempt, then state) wins, a later arrival winning ties;
fields the winner does not carry (``source_key`` from ``queued``, ``started_at`` from
``processing``) come from the intents it absorbed. The row changes only for a strictly higher
rank, so state never moves backwards.

Its declaration (intents, job type) is :data:`jobplatform.builtins.video`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from jobplatform.kinds import Outcome, Transaction
from schemas import VideoFailed, VideoProcessing, VideoQueued, VideoReady
from writer.kinds.tables import active, video_statements

VideoIntent = VideoQueued | VideoProcessing | VideoReady | VideoFailed


@dataclass(frozen=True, slots=True)
class VideoChange:
    """The one change a batch makes to a video row."""

    video_id: UUID
    tenant_id: int
    status: str
    attempt: int
    status_rank: int
    source_key: str | None
    queued_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    hls_key: str | None
    duration_s: float | None
    renditions: str | None
    """JSON text of the renditions (``ready`` only)."""
    error: str | None
    updated_at: datetime
    intent_ids: tuple[UUID, ...]
    attempts: tuple[int, ...]
    """The attempt of each of ``intent_ids``."""
    attempt_floor: int
    """The lowest attempt of the batch's unbroken run of attempts up to the winner's: the row
    takes the change only when its own attempt is at least this minus one (bounded versions:
    a forged attempt 1000 cannot wedge the video past every honest re-encode)."""


@dataclass(slots=True)
class VideoOutcome(Outcome):
    changed: int = 0
    """Video rows inserted or moved forward."""


def plan(intents: Sequence[VideoIntent]) -> list[VideoChange]:
    """One :class:`VideoChange` per video of the batch (:func:`~jobplatform.kinds.coalesce`
    by video id, each intent ranked once: this runs for every status change)."""
    groups: dict[UUID, list[VideoIntent]] = {}
    for intent in intents:
        group = groups.get(intent.video_id)
        if group is None:
            groups[intent.video_id] = [intent]
        else:
            group.append(intent)
    changes = []
    for group in groups.values():
        win = group[0]
        if len(group) > 1:
            best = win.rank()
            for intent in group[1:]:
                rank = intent.rank()
                if rank >= best:
                    win, best = intent, rank
        changes.append(_change(win, group))
    return changes


def _change(win: VideoIntent, group: Sequence[VideoIntent]) -> VideoChange:
    queued = [i for i in group if isinstance(i, VideoQueued)]
    starts = [i for i in group if isinstance(i, VideoProcessing) and i.attempt == win.attempt]
    # The highest attempt's, the latest arrival among equals.
    last_queued = max(reversed(queued), key=lambda i: i.attempt) if queued else None
    start = starts[-1].occurred_at if starts and not isinstance(win, VideoQueued) else None
    renditions = None
    if isinstance(win, VideoReady):
        renditions = json.dumps([r.model_dump(mode="json") for r in win.renditions])
    final = isinstance(win, VideoReady | VideoFailed)
    attempts = {i.attempt for i in group}
    floor = win.attempt
    while floor - 1 in attempts:
        floor -= 1
    return VideoChange(
        video_id=win.video_id,
        tenant_id=win.tenant_id,
        status=win.kind.removeprefix("video."),
        attempt=win.attempt,
        status_rank=win.rank()[1],
        source_key=last_queued.source_key if last_queued else None,
        queued_at=last_queued.occurred_at if last_queued else None,
        started_at=start,
        finished_at=win.occurred_at if final else None,
        hls_key=win.hls_key if isinstance(win, VideoReady) else None,
        duration_s=win.duration_s if isinstance(win, VideoReady) else None,
        renditions=renditions,
        error=win.reason if isinstance(win, VideoFailed) else None,
        updated_at=win.occurred_at,
        intent_ids=tuple(i.intent_id for i in group),
        attempts=tuple(i.attempt for i in group),
        attempt_floor=floor,
    )


def apply(tx: Transaction, changes: Sequence[VideoChange]) -> VideoOutcome:
    statements = video_statements(active())
    params: dict[str, Any] = {
        n: [c.video_id for c in changes] if n == "id" else [getattr(c, n) for c in changes]
        for n in statements.columns}
    params["attempt_floor"] = [c.attempt_floor for c in changes]
    [(changed, foreign, jumped)] = tx.execute(statements.upsert_videos, params)
    if foreign:
        bad = set(foreign)
        ids = [i for c in changes if c.video_id in bad for i in c.intent_ids]
        tx.reject(f"video {', '.join(map(str, sorted(bad)))} belongs to another tenant", ids)
    if jumped:
        video_id, _, last = jumped
        found = next(c for c in changes if str(c.video_id) == str(video_id))
        reach = 0 if last is None else int(last)
        for seen_attempt in sorted(set(found.attempts)):
            if seen_attempt <= reach + 1:
                reach = seen_attempt
        # Only the intents past the reach: the batch's others apply once these are set aside.
        ahead = [i for i, a in zip(found.intent_ids, found.attempts, strict=True) if a > reach]
        seen = "none" if last is None else str(last)
        tx.reject(f"video {video_id}: attempt {max(found.attempts)} jumps ahead of the last "
                  f"attempt seen ({seen}); the writer takes at most one past it (`jobplatform "
                  "writer reset video` resets a wedged video)", ahead)
    coalesced = sum(len(c.intent_ids) - 1 for c in changes)
    return VideoOutcome(coalesced=coalesced, changed=int(changed))


