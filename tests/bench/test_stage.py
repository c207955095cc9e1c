"""bench stage: its three methods hand the server the same rows."""

from __future__ import annotations

import random

import psycopg

from bench import stage


def test_each_method_reads_the_batch_it_was_given(database_url: str) -> None:
    batch = stage.make_batch(random.Random(3), 40)
    expected = (40, sum(len(row[1]) for row in batch), max(row[11] for row in batch))
    with psycopg.connect(database_url, autocommit=True) as conn:
        stager = stage.Stager(conn)
        for method in stage.METHODS:
            assert stager.method(method)(batch) == expected, method
            # the staging table is emptied at commit: the next batch starts from nothing
            assert stager.method(method)(batch[:5])[0] == 5  # type: ignore[index]
