"""The writer: one active process that applies write intents in short batched transactions.

Shaped like ``psycopg_pool.ConnectionPool``: explicit settings, :meth:`Writer.open` /
:meth:`Writer.close` (or ``with``), :meth:`Writer.run` until :meth:`Writer.stop`,
:meth:`Writer.get_stats` / :meth:`Writer.pop_stats`.

The loop is a pipeline of named stages, each an object of its own module::

    leader   (leader.py)   the lock; a standby waits, takes over, requeues what the dead held
    collect  (collect.py)  fast lane first, the bulk lane's share, batches sized by commit time
    pace     (apply.py)    the database time budget (bulk work only)
    apply    (apply.py)    prepare -> BEGIN, ledger, kinds' apply, intent log -> COMMIT; bisect
    ack      (ack.py)      one round trip per lane, after the commit
    chores   (chores.py)   heartbeat thread, stats, ledger pruning
    fastlane (fastlane.py) writes.fast on a second connection, from its own thread

with the database session (session.py: one connection, backoff through outages) under them
and :class:`~writer.engine.hooks.Hooks` around them. The intents themselves are applied by
the registered kinds (:mod:`jobplatform.kinds`); nothing here knows what they are.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Sequence
from typing import Any

import dramatiq
import psycopg

from jobplatform.auth import Keyring, keyring_of
from jobplatform.broker import Queues
from jobplatform.errors import ConfigError
from jobplatform.kinds import Registry, registry_for
from jobplatform.logging import get_logger
from jobplatform.settings import Settings, WriterSettings
from jobplatform.shards import ShardSpec
from jobplatform.tables import TableMap, load_tables
from writer.catalog import ensure_fits
from writer.db import connect
from writer.engine.ack import Acker
from writer.engine.apply import Applier, CommitOrder, IntentLogWriter
from writer.engine.chores import Chores
from writer.engine.collect import Collector
from writer.engine.fastlane import FastLane
from writer.engine.handlers import resolve
from writer.engine.hooks import Hooks
from writer.engine.leader import Leadership
from writer.engine.session import Session
from writer.kinds.tables import activate
from writer.pacing import DbBudget
from writer.sinks import check_sink
from writer.stats import WriterStats

log = get_logger("writer")


class Writer:
    """The batching consumer of ``writes.fast`` and ``writes.bulk``."""

    def __init__(
        self,
        settings: WriterSettings,
        *,
        database_url: str,
        broker: dramatiq.Broker,
        queues: Queues,
        registry: Registry | None = None,
        keyring: Keyring | None = None,
        log_writer: IntentLogWriter | None = None,
        hooks: Sequence[Hooks] = (),
        standby_poll_s: float = 0.5,
        heartbeat_s: float = 5.0,
        name: str | None = None,
        shard: ShardSpec | None = None,
        tables: TableMap | None = None,
    ) -> None:
        self.settings = settings
        self.database_url = database_url
        self.tables = tables if tables is not None else load_tables(
            settings.tables, schema=settings.db_schema)
        self.tables_checked = False
        self.broker: Any = broker
        self.shard = shard or ShardSpec()
        """The shard this writer applies; ``queues`` and ``settings.lock_key`` are its own
        (:meth:`from_settings` derives them)."""
        self.queues = queues
        self.registry = resolve(registry)
        #: The keys intents must be signed with (default: the broker's, from build_broker).
        self.keyring = keyring if keyring is not None else keyring_of(broker)
        self.log_writer = log_writer
        self.hooks: tuple[Hooks, ...] = tuple(hooks)
        self.standby_poll_s = standby_poll_s
        self.heartbeat_s = heartbeat_s
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self.budget = DbBudget(settings.db_budget)
        self._stop = threading.Event()
        self._opened = False

        self.session = Session(self, database_url)
        self.commit_order = CommitOrder()
        self.leader = Leadership(self)
        self.collector = Collector(self)
        self.applier = Applier(self)
        self.acker = Acker(self)
        self.chores = Chores(self)
        self.fastlane = FastLane(self, database_url)
        self.stats = WriterStats(db_budget=settings.db_budget,
                                 batch_rows_cap=self.collector.sizer.rows)

    @classmethod
    def from_settings(cls, settings: Settings, broker: dramatiq.Broker, *,
                      log_writer: IntentLogWriter | None = None,
                      shard: ShardSpec | None = None, **kwargs: Any) -> Writer:
        """A writer of ``settings``; of ``shard`` (default ``WRITER_SHARD``, else the only
        one), with that shard's lanes and advisory lock key."""
        if not settings.database_url:
            raise ValueError("settings.database_url is not set (resolve the services first)")
        kwargs.setdefault("registry", registry_for(settings))
        spec = shard or shard_of_settings(settings)
        writer_settings = settings.writer.model_copy(
            update={"lock_key": spec.lock_key(settings.writer.lock_key)})
        queues = Queues.from_settings(settings).for_shard(spec.index, spec.count)
        return cls(writer_settings, database_url=settings.database_url, broker=broker,
                   queues=queues, log_writer=log_writer, shard=spec, **kwargs)

    # --- life cycle ------------------------------------------------------------------------

    def open(self) -> None:
        """Check the kinds, create the connection pool (no connection yet), start the
        heartbeat thread. Raises :class:`~jobplatform.kinds.RegistryError` when a registered
        intent kind has no handler: nothing would apply it."""
        if self._opened:
            return
        self.registry.check_handlers()
        activate(self.tables)
        try:
            with connect(self.database_url, autocommit=True,
                         schema=self.settings.db_schema) as conn:
                self.check_tables(conn)
        except psycopg.OperationalError as exc:
            log.warning("table map not checked yet: the database does not answer; it is "
                        "checked before the first batch", error=str(exc))
        self.session.open()
        self._stop.clear()
        self._opened = True
        self.chores.start()
        self.fastlane.start()

    def check_tables(self, conn: psycopg.Connection[Any]) -> None:
        """Refuse to go on (:class:`~writer.catalog.TableMapError`) when the table map or a
        kind's table sink does not fit the database; once per writer."""
        if not self.tables_checked:
            sinks = [p for kind in self.registry.kinds for sink in kind.sinks
                     for p in check_sink(conn, sink)]
            ensure_fits(conn, self.tables, sinks)
            self.tables_checked = True

    def close(self) -> None:
        """Stop, put held messages back, release the lock and close everything."""
        self.stop()
        if not self._opened:
            return
        self._shutdown()
        self.fastlane.close()
        self.chores.stop()
        self.session.close()
        if self.log_writer is not None:
            self.log_writer.close()
        self._opened = False

    def __enter__(self) -> Writer:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stop(self) -> None:
        """Ask :meth:`run` to return after the batch in hand (safe from signal handlers)."""
        self._stop.set()

    @property
    def shard_key(self) -> int | None:
        """The shard's number in Redis keys (stats, consumers); None when unsharded."""
        return self.shard.index if self.shard.sharded else None

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @property
    def active(self) -> bool:
        return self.leader.active

    @property
    def backend_pid(self) -> int | None:
        """PostgreSQL backend pid of the writer's connection (the lock holder when active)."""
        return self.session.backend_pid

    @property
    def backend_pids(self) -> list[int]:
        """The backend pids of every connection the writer holds: its own, then the fast
        lane's (``WRITER_FAST_CONNECTION``, while active)."""
        pids = (self.session.backend_pid, self.fastlane.backend_pid)
        return [pid for pid in pids if pid is not None]

    def run(self) -> None:
        """Apply intents until :meth:`stop`; as a standby, wait for the lock first."""
        self.open()
        log.info("writer started", name=self.name, broker_id=self.broker.broker_id,
                 shard=self.shard.label, lanes=list(self.queues.writes),
                 lock_key=self.settings.lock_key, budget=self.settings.db_budget,
                 kinds=self.registry.names())
        try:
            while not self.stopping:
                self.chores.tick()
                if not self.leader.ensure_active():
                    continue
                lost = self.leader.take_lost()
                if lost is not None:
                    self.leader.step_down(lost)
                    continue
                self.call_hooks("before_collect")
                batch = self.collector.collect(bulk_after=time.monotonic() + self.budget.delay())
                self.call_hooks("after_collect", batch)
                if batch.items:
                    self.call_hooks("before_pace", batch)
                    self.applier.pace(batch)
                    self.call_hooks("after_pace", batch)
                    if self.applier.process(batch):
                        self.acker.ack(batch.items)
                elif self.collector.redis_dirty:
                    self.collector.recover_redis()
                self.chores.prune_ledger()
        finally:
            self._shutdown()
        log.info("writer stopped", name=self.name, **self.stats.snapshot())

    def _shutdown(self) -> None:
        if self.session.pool is None:
            return
        was_active = self.leader.resign()
        self.session.drop()
        self.set_role("stopped")
        if was_active:  # the last stats say "stopped", so no reader takes them for a live writer
            self.chores.emit_stats(publish=True)

    # --- shared by the stages --------------------------------------------------------------

    def wait(self, seconds: float) -> None:
        """Sleep up to ``seconds``, returning early on :meth:`stop`; the loop stays alive."""
        deadline = time.monotonic() + seconds
        while not self._stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._stop.wait(min(left, 0.25))
            self.chores.tick()

    def set_role(self, role: str) -> None:
        old = self.stats.role
        if old != role:
            log.info("writer role", role=role, name=self.name)
            self.stats.gauge(role=role)
            self.call_hooks("on_role_change", old, role)

    def call_hooks(self, name: str, *args: Any) -> None:
        for hook in self.hooks:
            try:
                getattr(hook, name)(*args)
            except Exception:
                log.exception("writer hook failed", hook=type(hook).__name__, hook_point=name)

    # --- stats -----------------------------------------------------------------------------

    def get_stats(self) -> dict[str, Any]:
        """Counters since open (or the last :meth:`pop_stats`) and the latest gauges.

        Counters: ``batches``, ``intents``, ``applied``, ``rows``, ``coalesced``,
        ``skipped_duplicate``, ``skipped_unchanged``, ``dead``, ``rejected``, ``bisections``,
        ``db_retries``, ``redis_retries``, ``lost_lock``, ``acks``, ``ledger_pruned``. Gauges:
        ``role``, ``lag_ms`` (age of the oldest message of the last batch at commit),
        ``lag_max_ms``, ``db_share`` (measured share of wall time in transactions), ``db_budget``,
        ``backlog_fast`` / ``backlog_bulk``, ``commit_ms_mean|p50|p99|max|count`` (transaction
        time of the last 4,096 batches), ``batch_rows_cap`` (row cap of the next batch, sized
        for ``WRITER_TARGET_TXN_MS``) and ``ms_per_row`` (transaction time per row it learned).
        """
        self.stats.gauge(db_share=self.budget.used())
        return self.stats.snapshot()

    def pop_stats(self) -> dict[str, Any]:
        """:meth:`get_stats`, then reset the counters, ``lag_max_ms`` and the histogram."""
        self.stats.gauge(db_share=self.budget.used())
        return self.stats.pop()


def shard_of_settings(settings: Settings) -> ShardSpec:
    """The shard ``WRITER_SHARD`` names (``K/N``), else shard 0 of ``WRITER_SHARDS``.

    Raises :class:`~jobplatform.errors.ConfigError` when ``WRITER_SHARD``'s N and an explicit
    ``WRITER_SHARDS`` disagree: producers would route to shards no writer consumes.
    """
    writer = settings.writer
    if writer.shard is None:
        if writer.shards > 1:
            raise ConfigError(f"WRITER_SHARDS is {writer.shards}: say which shard this writer "
                              "applies with --shard K/N (or WRITER_SHARD)")
        return ShardSpec()
    spec = ShardSpec.parse(writer.shard)
    if "shards" in writer.model_fields_set and writer.shards != spec.count:
        raise ConfigError(f"--shard {spec.label}: but WRITER_SHARDS is {writer.shards}, so "
                          "producers route to another number of shards; set both alike")
    return spec

