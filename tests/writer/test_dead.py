"""The dead-letter table's functions against a real PostgreSQL."""

from __future__ import annotations

import uuid

from writer import dead
from writer.db import connect


def test_record_list_get_retry_drop(database_url: str) -> None:
    intent_id = uuid.uuid4()
    with connect(database_url, autocommit=True) as conn:
        first = dead.record(conn, "writes.fast", '{"kind":"video.ready"}', "bad tenant",
                            intent_id=intent_id, kind="video.ready", tenant_id=7)
        second = dead.record(conn, "writes.bulk", "not json", "undecodable")
        assert [d.id for d in dead.list(conn)] == [second, first]
        assert [d.id for d in dead.list(conn, kind="video.ready")] == [first]
        assert [d.id for d in dead.list(conn, limit=1, offset=1)] == [first]
        found = dead.get(conn, first)
        assert found is not None
        assert (found.intent_id, found.queue, found.reason, found.tenant_id, found.retried_at) == (
            intent_id, "writes.fast", "bad tenant", 7, None
        )
        assert dead.mark_retried(conn, first)
        retried = dead.get(conn, first)
        assert retried is not None
        assert retried.retried_at is not None
        assert dead.drop(conn, second)
        assert not dead.drop(conn, second)
        assert dead.get(conn, second) is None
        assert not dead.mark_retried(conn, second)
