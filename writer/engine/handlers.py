"""The registry as the writer needs it: each kind's applying code imported.

A kind may leave its applying code to the module :attr:`jobplatform.kinds.Kind.handler` names,
so producers load the kind without it. :func:`resolve` imports those modules and fills in what
each declaration left unset (``plan``, ``apply``, ``sql``, ``migrations``, ``after_commit``,
``dead_lettered``, ``redriven``); the engine works on the result only.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
from collections.abc import Sequence
from typing import Any

from jobplatform.kinds import Kind, Registry, RegistryError, coalesce, default_registry

_FIELDS = ("plan", "apply", "sql", "migrations", "after_commit", "dead_lettered", "redriven")
#: id of a registry -> (that registry, resolved). Holding the registry keeps its id unique.
_RESOLVED: dict[int, tuple[Registry, Registry]] = {}


def resolve(registry: Registry | None = None) -> Registry:
    """``registry`` (the process's by default) with every kind's handler imported."""
    registry = registry if registry is not None else default_registry()
    if all(kind.handler is None and not kind.sinks for kind in registry.kinds):
        return registry
    cached = _RESOLVED.get(id(registry))
    if cached is None:
        resolved = Registry([_resolve(registry, kind) for kind in registry.kinds],
                            registry.origins)
        cached = _RESOLVED[id(registry)] = (registry, resolved)
    return cached[1]


def _unchanged(intents: Sequence[Any]) -> Sequence[Any]:
    """A sink kind's plan: the intents themselves (each sink coalesces its rows by key)."""
    return intents


def _resolve(registry: Registry, kind: Kind) -> Kind:
    if kind.sinks and kind.apply is None:
        from writer.sinks import apply_sinks

        kind = dataclasses.replace(
            kind, apply=functools.partial(apply_sinks, kind.sinks),
            plan=_unchanged if kind.plan is coalesce else kind.plan)
    if kind.handler is None:
        return kind
    origin = registry.origins.get(kind.name, "registered in code")
    try:
        module = importlib.import_module(kind.handler)
    except Exception as exc:
        raise RegistryError(f"kind {kind.name!r} ({origin}): cannot import its handler "
                            f"{kind.handler!r}: {type(exc).__name__}: {exc}") from exc
    changes = {}
    for name in _FIELDS:
        unset = getattr(kind, name) is None or (name == "plan" and kind.plan is coalesce)
        if unset and hasattr(module, name):
            changes[name] = getattr(module, name)
    return dataclasses.replace(kind, handler=None, **changes)
