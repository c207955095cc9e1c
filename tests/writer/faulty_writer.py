"""``python -m tests.writer.faulty_writer``: the writer, killed (SIGKILL) at a chosen point.

For crash tests, configured like ``jobplatform writer`` (the environment) plus:

- ``FAULT_AT``: ``dead_letter`` dies once dead letters are committed, before their messages
  are acked; ``append`` dies once the ``FAULT_BATCH``-th batch's log record is durable, before
  its ``COMMIT``.
- ``FAULT_COMMAND``: a JSON list, the command run just before dying (a crash of PostgreSQL).
- ``FAULT_CHECKPOINT_URL``: a database to ``CHECKPOINT`` before the ``FAULT_BATCH``-th batch
  begins, so that its ``nextval`` writes the sequence's WAL record (once every 32 values
  otherwise) and a crash before its commit makes PostgreSQL reuse its number.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Sequence
from typing import Any

from jobplatform.broker import build_broker
from jobplatform.cli._common import settings_from_env
from schemas import BaseIntent
from writer.db import connect
from writer.engine import Writer
from writer.engine.hooks import DeadLetterEntry, Hooks
from writer.intentlog import IntentLog
from writer.migrate import upgrade


def die() -> None:
    command = os.environ.get("FAULT_COMMAND")
    if command:
        subprocess.run(json.loads(command), check=True, capture_output=True)
    os.kill(os.getpid(), signal.SIGKILL)


class Fault(Hooks):
    def __init__(self) -> None:
        self.at = os.environ["FAULT_AT"]
        self.batch = int(os.environ.get("FAULT_BATCH", "1"))
        self.begun = 0

    def before_commit(self, items: Sequence[Any]) -> None:
        self.begun += 1
        url = os.environ.get("FAULT_CHECKPOINT_URL")
        if url and self.begun == self.batch:
            with connect(url, autocommit=True) as conn:
                conn.execute("CHECKPOINT")

    def on_dead_letter(self, entries: Sequence[DeadLetterEntry]) -> None:
        if self.at == "dead_letter":
            die()


class FaultyLog(IntentLog):
    fault: Fault

    def append(self, batch_seq: int, intents: Sequence[BaseIntent]) -> None:
        super().append(batch_seq, intents)
        if self.fault.at == "append" and self.get_stats()["batches"] == self.fault.batch:
            die()


def main() -> None:
    settings = settings_from_env()
    assert settings.database_url is not None
    assert settings.redis_url is not None
    upgrade(settings.database_url)
    fault = Fault()
    log = FaultyLog(settings.writer_log_dir, writer_id=f"faulty-{os.getpid()}")
    log.fault = fault
    broker = build_broker(settings, settings.redis_url, set_global=False)
    with Writer.from_settings(settings, broker, log_writer=log, hooks=[fault]) as writer:
        writer.run()


if __name__ == "__main__":
    main()
