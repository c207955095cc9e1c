"""Kinds: the plug-in unit of the platform.

A **kind** is a family of write intents (and, optionally, the jobs that produce them) with the
code that applies them. It is one module plus its own ``.sql`` file, registered without editing
the library:

- through the entry-point group ``jobplatform.kinds`` of an installed package
  (``attendance = "academy.attendance"``: the module, or ``"module:attr"``), or
- through the setting ``JOBPLATFORM_KINDS``, a comma-separated list of modules, for
  applications that are not packaged.

The module exposes ``kind = Kind(...)``. The writer, the actors' emitter, the publish client,
the log reader, replay and the pytest plugin all load the same :class:`Registry`
(:func:`load_registry`). A kind module is imported by API services and actors too: it must not
import the database driver at module level. Its :attr:`Kind.apply` needs none: it works
through the :class:`Transaction` the writer hands it. A kind whose applying code is heavy may
leave it to another module, named by :attr:`Kind.handler`, which only the writer imports (the
built-in kinds do: :mod:`jobplatform.builtins` declares them).

What a kind declares, and who uses it:

============================  =================================================================
``intents``                   the :class:`schemas.BaseIntent` models: their ``kind``, ``lane``,
                              ``weight()``, ``entity_key()`` and ``rank()`` (routing, batching,
                              coalescing), ``matches()`` and ``describe()`` (``log show``)
``plan``                      pure, before the transaction: the intents of one batch (in
                              arrival order, each id once) become what ``apply`` writes;
                              :func:`coalesce` by default
``apply``                     ``apply(tx, plan)``, inside the writer's transaction
``sql``                       the ``.sql`` file of named statements (``-- name: upsert``) that
                              ``tx.run("upsert", ...)`` executes
``after_commit``              work after the commit (the roster's ``done`` progress record)
``dead_lettered``             ``dead_lettered(tx, intents, reason)``, in the transaction that
                              stores them as dead letters (the roster fails the import)
``redriven``                  ``redriven(tx, intents)``, when ``jobplatform dead retry`` sends
                              them again (the roster's import comes back)
``migrations``                a folder of numbered ``.sql`` migrations the writer applies
``jobs``                      the :class:`JobType` s the publish client accepts
``handler``                   a module the writer imports for what the declaration leaves out
                              (its ``plan``, ``apply``, ``sql``, ``migrations``,
                              ``after_commit``, ``dead_lettered``, ``redriven``)
``sinks``                     :class:`~jobplatform.sinks.TableSink` s: the application's
                              tables written with no SQL and no ``apply``
============================  =================================================================

Nothing is ever acknowledged that no handler applied: the writer refuses to start while a
registered intent kind has no ``apply``, and a message of a kind no registered kind declares
goes to the dead letters with a reason that names the registration it lacks.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.metadata
import json
import operator
import os
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Generic, NoReturn, Protocol, TypeVar
from uuid import UUID

from pydantic import Field, TypeAdapter, ValidationError

from jobplatform.errors import ConfigError
from jobplatform.sinks import TableSink
from schemas import BaseIntent, BaseJob, DecodeError, FieldError
from schemas.jobs import _decode

if TYPE_CHECKING:
    from jobplatform.progress import ProgressStore
    from jobplatform.settings import Settings

__all__ = [
    "ENTRY_POINT_GROUP",
    "AfterCommit",
    "Change",
    "JobType",
    "Kind",
    "Outcome",
    "Registry",
    "RegistryError",
    "Transaction",
    "UnknownKind",
    "coalesce",
    "default_registry",
    "load_registry",
    "registry_for",
]

#: The entry-point group installed packages register their kinds under.
ENTRY_POINT_GROUP = "jobplatform.kinds"
#: The setting (environment variable) listing kind modules of applications that are not packaged.
KINDS_SETTING = "JOBPLATFORM_KINDS"

IntentT = TypeVar("IntentT", bound=BaseIntent)


class RegistryError(ConfigError):
    """The kinds cannot be loaded or do not fit together; the message names the plug-in."""


class UnknownKind(DecodeError):
    """An intent of a kind that no registered kind declares."""


class Transaction(Protocol):
    """The writer's open transaction, as a kind's :attr:`Kind.apply` sees it.

    Statements are the named blocks of the kind's ``.sql`` file. Parameters use psycopg's
    ``%(name)s`` placeholders; ``identifiers`` fill ``{name}`` placeholders with quoted SQL
    identifiers (a table name from configuration, say). Driver errors need no handling: the
    writer rolls the batch back and splits it, or holds it through an outage.
    """

    @property
    def batch_seq(self) -> int:
        """The batch's number in the write-intent log."""

    @property
    def connection(self) -> Any:
        """The psycopg connection, for what :meth:`run` and :meth:`copy` do not cover."""

    def run(self, name: str, params: Mapping[str, Any] | None = None,
            **identifiers: str) -> list[tuple[Any, ...]]:
        """Execute the named statement; its rows (none for a statement without a result)."""

    def copy(self, name: str, rows: Iterable[Sequence[Any]], *, types: Sequence[str],
             **identifiers: str) -> None:
        """Run the named ``COPY ... FROM STDIN (FORMAT BINARY)`` with ``rows`` of ``types``."""

    def execute(self, query: Any, params: Mapping[str, Any] | None = None
                ) -> list[tuple[Any, ...]]:
        """Execute a statement composed with :mod:`psycopg.sql` (SQL built from configuration:
        the table map, table sinks); its rows."""

    def reject(self, reason: str, intents: Iterable[BaseIntent | UUID] = ()) -> NoReturn:
        """Refuse the batch because of bad data: the writer rolls it back, isolates the named
        intents (or splits the batch when none is named) and dead-letters them with ``reason``."""

    def check_tenants(self, table: str, key: str, tenant: str,
                      claims: Iterable[tuple[Any, int, Sequence[BaseIntent | UUID]]]) -> None:
        """Ownership, in this transaction: each claim is ``(key value, tenant, intents)``; a
        row of ``table`` with that key under another tenant rejects those intents, naming
        both tenants. Keys with no row pass (the kind creates them under the claimed tenant).
        One index probe per key."""


@dataclass(frozen=True, slots=True)
class Change(Generic[IntentT]):
    """The one change a batch makes to one entity (:func:`coalesce`)."""

    key: tuple[Hashable, ...]
    winner: IntentT
    """The highest-ranked intent; the later arrival among equals."""
    intents: tuple[IntentT, ...]
    """Every intent of the entity in the batch, in arrival order (the winner among them)."""

    @property
    def intent_ids(self) -> tuple[UUID, ...]:
        return tuple(i.intent_id for i in self.intents)

    def latest(self, name: str) -> Any:
        """The value of field ``name`` from the highest-ranked, latest intent that carries one
        (not None): a late lower-ranked intent's field fills what the winner lacks."""
        ranked = sorted(enumerate(self.intents), key=lambda p: (p[1].rank(), p[0]), reverse=True)
        for _, intent in ranked:
            value = getattr(intent, name, None)
            if value is not None:
                return value
        return None


def coalesce(intents: Sequence[IntentT]) -> list[Change[IntentT]]:
    """Group ``intents`` (arrival order) by :meth:`~schemas.BaseIntent.entity_key`; the winner
    of each is the highest :meth:`~schemas.BaseIntent.rank`, the later arrival among equals."""
    groups: dict[tuple[Hashable, ...], list[IntentT]] = {}
    for intent in intents:
        groups.setdefault(intent.entity_key(), []).append(intent)
    changes = []
    for key, group in groups.items():
        best = group[0]
        best_rank = best.rank()
        for intent in group[1:]:
            rank = intent.rank()
            if rank >= best_rank:
                best, best_rank = intent, rank
        changes.append(Change(key, best, tuple(group)))
    return changes


@dataclass(slots=True)
class Outcome:
    """What a kind's :attr:`~Kind.apply` did. Subclass it to carry more to ``after_commit``."""

    coalesced: int = 0
    """Intents folded into another intent's change."""
    unchanged: int = 0
    """Rows already present and identical: nothing written."""


@dataclass(frozen=True, slots=True)
class AfterCommit:
    """What a kind's ``after_commit`` may use: the jobs' progress records in Redis."""

    progress: ProgressStore
    """Failures here are logged and never undo the commit."""


@dataclass(frozen=True, slots=True)
class JobType:
    """A job the publish client accepts: its model, the actor that runs it and its queue."""

    model: type[BaseJob]
    actor: str
    """The actor name the job travels under (no actor code is imported by publishers)."""
    queue: str | Callable[[Settings], str]
    """The queue name, or a function of the settings (the built-ins' ``QUEUE_VIDEO``)."""
    queued: Callable[[Any, datetime], BaseIntent | None] | None = None
    """The job's first status intent, sent to the writer when it is published."""

    @property
    def kind(self) -> str:
        return _literal_kind(self.model)

    def queue_name(self, settings: Settings) -> str:
        return self.queue if isinstance(self.queue, str) else self.queue(settings)


@dataclass(frozen=True)
class Kind:
    """A family of intents and what applies them. See the module's documentation."""

    name: str
    intents: tuple[type[BaseIntent], ...]
    apply: Callable[[Transaction, Any], Outcome | None] | None = None
    plan: Callable[[Sequence[Any]], Any] = coalesce
    sql: Path | Traversable | None = None
    after_commit: Callable[[AfterCommit, Any], None] | None = None
    dead_lettered: Callable[[Transaction, Sequence[Any], str], Outcome | None] | None = None
    redriven: Callable[[Transaction, Sequence[Any]], Outcome | None] | None = None
    migrations: Path | Traversable | None = None
    jobs: tuple[JobType, ...] = ()
    handler: str | None = None
    """A module the writer imports for the fields left unset here; producers never import it."""
    sinks: tuple[TableSink, ...] = ()
    """Declarative table sinks (:mod:`jobplatform.sinks`): with no ``apply``, the writer
    applies the kind's intents through them, in order."""
    order: int = 100
    """Kinds apply in this order inside one batch (then by name); the built-ins use 10, 20."""

    @property
    def intent_kinds(self) -> tuple[str, ...]:
        return tuple(_literal_kind(model) for model in self.intents)


class Registry:
    """The kinds one process knows, and the lookups made from them.

    ``origins`` says where each kind was registered (entry point or setting), by kind name.
    """

    def __init__(self, kinds: Iterable[Kind], origins: Mapping[str, str] | None = None) -> None:
        self.origins: Mapping[str, str] = dict(origins or {})
        self.kinds: tuple[Kind, ...] = tuple(sorted(kinds, key=lambda k: (k.order, k.name)))
        self._names: dict[str, Kind] = {}
        self._models: dict[str, type[BaseIntent]] = {}
        self._owners: dict[str, Kind] = {}
        self._jobs: dict[str, JobType] = {}
        for kind in self.kinds:
            if kind.name in self._names:
                raise RegistryError(
                    f"two plug-ins register a kind named {kind.name!r} "
                    f"({self._origin(self._names[kind.name])} and {self._origin(kind)})")
            self._names[kind.name] = kind
            for model, intent_kind in zip(kind.intents, kind.intent_kinds, strict=True):
                owner = self._owners.get(intent_kind)
                if owner is not None:
                    raise RegistryError(
                        f"intent kind {intent_kind!r} is declared by two kinds: {owner.name!r} "
                        f"({self._origin(owner)}) and {kind.name!r} ({self._origin(kind)})")
                self._owners[intent_kind] = kind
                self._models[intent_kind] = model
            for job in kind.jobs:
                if job.kind in self._jobs:
                    raise RegistryError(f"job kind {job.kind!r} is declared twice")
                self._jobs[job.kind] = job
        self._intent_adapter = _union_adapter(list(self._models.values()))
        self._job_adapter = _union_adapter([job.model for job in self._jobs.values()])

    def __repr__(self) -> str:
        return f"Registry({self.names()})"

    def _origin(self, kind: Kind) -> str:
        return self.origins.get(kind.name, "registered in code")

    # --- lookups -------------------------------------------------------------------------

    def kind(self, name: str) -> Kind:
        found = self._names.get(name)
        if found is None:
            raise KeyError(f"no kind named {name!r} is registered ({self.names()})")
        return found

    def kind_for(self, intent_kind: str) -> Kind | None:
        """The kind that declares intents of ``intent_kind``, if one is registered."""
        return self._owners.get(intent_kind)

    @property
    def intent_kinds(self) -> frozenset[str]:
        return frozenset(self._models)

    @property
    def job_types(self) -> tuple[JobType, ...]:
        return tuple(self._jobs.values())

    def job_type(self, job_kind: str) -> JobType | None:
        return self._jobs.get(job_kind)

    def names(self) -> str:
        return ", ".join(k.name for k in self.kinds) or "none"

    def unknown(self, intent_kind: str) -> str:
        """Why an intent of ``intent_kind`` cannot be applied, and what would handle it."""
        family = intent_kind.split(".", 1)[0]
        return (
            f"no registered kind declares intents of kind {intent_kind!r}: register the module "
            f"of the {family!r} kind in {KINDS_SETTING}, or install the package that declares "
            f"it under the {ENTRY_POINT_GROUP!r} entry points (registered: {self.names()})"
        )

    def missing_handlers(self) -> list[str]:
        """One line per registered intent kind that nothing applies."""
        return [
            f"intent kind {intent_kind!r} of kind {kind.name!r} ({self._origin(kind)}) has no "
            "apply handler" for kind in self.kinds
            if kind.apply is None and kind.handler is None and not kind.sinks
            for intent_kind in kind.intent_kinds
        ]

    def check_handlers(self) -> None:
        """Raise :class:`RegistryError` naming every intent kind without a handler."""
        missing = self.missing_handlers()
        if missing:
            raise RegistryError("the writer cannot apply every registered intent: "
                                + "; ".join(missing))

    # --- decoding ------------------------------------------------------------------------

    def decode_intent(self, data: bytes | str | Mapping[str, Any]) -> BaseIntent:
        """Decode a write intent of any registered kind; raise :class:`~schemas.DecodeError`
        naming each bad field, or :class:`UnknownKind` for a kind nobody registered.

        JSON text is validated as it is, without building Python objects first (how intents
        travel: :class:`~jobplatform.emit.IntentEmitter` sends their JSON); only what fails
        is parsed again, to say why."""
        if isinstance(data, bytes | str):
            if self._intent_adapter is not None:
                with contextlib.suppress(ValidationError):
                    valid: BaseIntent = self._intent_adapter.validate_json(data)
                    return valid
            with contextlib.suppress(ValueError):
                data = json.loads(data)
        if isinstance(data, Mapping):
            kind = data.get("kind")
            if isinstance(kind, str) and kind not in self._models:
                raise UnknownKind("intent", [FieldError("kind", self.unknown(kind[:100]))])
        if self._intent_adapter is None:
            raise UnknownKind("intent", [FieldError("kind", "no kinds are registered")])
        result: BaseIntent = _decode(self._intent_adapter, "intent", data)
        return result

    def decode_job(self, data: bytes | str | Mapping[str, Any]) -> BaseJob:
        """Decode a job message of any registered job type."""
        if self._job_adapter is None:
            raise DecodeError("job", [FieldError("kind", "no job types are registered")])
        result: BaseJob = _decode(self._job_adapter, "job", data)
        return result


def _literal_kind(model: type[Any]) -> str:
    info = model.model_fields.get("kind")
    default = None if info is None else info.default
    if not isinstance(default, str) or not default:
        raise RegistryError(
            f"{model.__module__}.{model.__qualname__} must declare "
            "kind: Literal['family.name'] = 'family.name'")
    return default


def _union_adapter(models: list[type[Any]]) -> TypeAdapter[Any] | None:
    if not models:
        return None
    if len(models) == 1:
        return TypeAdapter(models[0])
    union: Any = functools.reduce(operator.or_, models)
    annotated: Any = Annotated
    return TypeAdapter(annotated[union, Field(discriminator="kind")])


# --- loading -------------------------------------------------------------------------------

def split_modules(value: str | Iterable[str] | None) -> tuple[str, ...]:
    """``"a.b, c"`` -> ``("a.b", "c")``."""
    if value is None:
        return ()
    parts = value.replace(",", " ").split() if isinstance(value, str) else list(value)
    return tuple(dict.fromkeys(p.strip() for p in parts if p.strip()))


@lru_cache(maxsize=16)
def load_registry(modules: tuple[str, ...] = (), *, entry_points: bool = True) -> Registry:
    """The kinds of the ``jobplatform.kinds`` entry points plus those of ``modules``.

    A target is a module (its ``kind`` attribute, or ``kinds`` for several) or ``module:attr``.
    Raises :class:`RegistryError` naming the plug-in that failed to load.
    """
    targets: list[tuple[str, str]] = []
    if entry_points:
        for ep in sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP),
                         key=lambda e: e.name):
            targets.append((f"entry point {ep.name!r} = {ep.value!r}", ep.value))
    for module in modules:
        targets.append((f"{KINDS_SETTING} module {module!r}", module))
    kinds: list[Kind] = []
    origins: dict[str, str] = {}
    seen: set[int] = set()
    for origin, target in targets:
        for kind in _load(origin, target):
            if id(kind) in seen:
                continue
            seen.add(id(kind))
            kinds.append(kind)
            origins.setdefault(kind.name, origin)
    return Registry(tuple(kinds), origins)


def _load(origin: str, target: str) -> list[Kind]:
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise RegistryError(f"{origin}: cannot import {module_name!r}: "
                            f"{type(exc).__name__}: {exc}") from exc
    names = [attr] if attr else [n for n in ("kind", "kinds") if hasattr(module, n)]
    if not names:
        raise RegistryError(f"{origin}: module {module_name!r} defines neither `kind` nor "
                            "`kinds`")
    found: list[Kind] = []
    for name in names:
        value = getattr(module, name, None)
        items = value if isinstance(value, list | tuple) else [value]
        for item in items:
            if not isinstance(item, Kind):
                raise RegistryError(f"{origin}: {module_name}.{name} is not a jobplatform.kinds."
                                    f"Kind (got {type(item).__name__})")
            found.append(item)
    return found


def registry_for(settings: Settings) -> Registry:
    """The registry of the process: entry points plus ``JOBPLATFORM_KINDS``."""
    return load_registry(split_modules(settings.jobplatform_kinds))


def default_registry() -> Registry:
    """:func:`registry_for` with the kinds setting read from the environment."""
    return load_registry(split_modules(os.environ.get(KINDS_SETTING)))
