"""A tiny evaluator of the instant-vector expressions our alert rules use, over one scrape.

It knows ``AGG(a) OP number``, ``AGG(a - b) OP number`` and ``AGG(a) OP number * AGG(b)``
(AGG: sum, max, min) and nothing more; anything else raises :class:`Unsupported`, so a test
never evaluates a rule it cannot read.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable

from tests.scrape import Samples

_RULE = re.compile(
    r"^\s*(?P<agg>sum|max|min)\((?P<a>[a-z_:][a-z0-9_:]*)(?:\s*-\s*(?P<b>[a-z_:][a-z0-9_:]*))?\)"
    r"\s*(?P<op>>=|<=|==|>|<)\s*(?P<n>[0-9.]+)"
    r"(?:\s*\*\s*(?P<agg2>sum|max|min)\((?P<c>[a-z_:][a-z0-9_:]*)\))?\s*$")
_OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt, "<": operator.lt, ">=": operator.ge, "<=": operator.le, "==": operator.eq}
_AGGS: dict[str, Callable[[list[float]], float]] = {"sum": sum, "max": max, "min": min}


class Unsupported(ValueError):
    """The expression is beyond this evaluator."""


def _series(samples: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: v for (sample, labels), v in samples.items() if sample == name}


def fires(expr: str, samples: Samples) -> bool:
    """Whether ``expr`` returns a sample (the alert would be pending) on ``samples``."""
    match = _RULE.match(expr)
    if match is None:
        raise Unsupported(expr)
    a = _series(samples, match["a"])
    if match["b"]:
        b = _series(samples, match["b"])
        values = [a[k] - b[k] for k in a if k in b]  # one-to-one on identical labels
    else:
        values = list(a.values())
    if not values:  # an empty vector: sum() and max() return nothing, so nothing fires
        return False
    bound = float(match["n"])
    if match["c"]:
        right = list(_series(samples, match["c"]).values())
        if not right:
            return False
        bound *= _AGGS[match["agg2"]](right)
    return _OPS[match["op"]](_AGGS[match["agg"]](values), bound)
