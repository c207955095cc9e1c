"""Coalescing (``jobplatform.kinds.coalesce``), checked against applying intents one by one.

The reference is the rule the writer's statements follow for one entity: an intent replaces
the entity's state when its rank is at least the state's (a lower rank never overwrites, the
later of equals wins); a field a change carries replaces the field's value on the same rule.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Hashable, Sequence
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from jobplatform.kinds import Change, coalesce
from schemas import BaseIntent, RosterStatus
from tests.strategies import INTENTS, T0, roster_intents

IMPORT = uuid.UUID(int=11, version=4)

Key = tuple[Hashable, ...]
FIELDS = ("source_key", "report_key", "error", "total", "valid", "chunks")


def one_by_one(intents: Sequence[BaseIntent]) -> dict[Key, BaseIntent]:
    state: dict[Key, BaseIntent] = {}
    for intent in intents:
        current = state.get(intent.entity_key())
        if current is None or intent.rank() >= current.rank():
            state[intent.entity_key()] = intent
    return state


def fields_one_by_one(intents: Sequence[BaseIntent], name: str) -> dict[Key, Any]:
    kept: dict[Key, tuple[tuple[int, ...], Any]] = {}
    for intent in intents:
        value = getattr(intent, name, None)
        held = kept.get(intent.entity_key())
        if value is not None and (held is None or intent.rank() >= held[0]):
            kept[intent.entity_key()] = (intent.rank(), value)
    return {key: value for key, (_, value) in kept.items()}


def batches(intents: list[BaseIntent], cuts: list[int]) -> list[list[BaseIntent]]:
    edges = sorted({0, len(intents), *(c % (len(intents) + 1) for c in cuts)})
    return [intents[a:b] for a, b in itertools.pairwise(edges)]


@given(st.lists(INTENTS, max_size=30))
def test_the_plan_of_a_batch_is_what_one_by_one_gives(intents: list[BaseIntent]) -> None:
    changes = coalesce(intents)
    # one change per entity, in order of first arrival, holding each intent once
    keys = [c.key for c in changes]
    assert keys == list(dict.fromkeys(i.entity_key() for i in intents))
    assert sorted(id(i) for c in changes for i in c.intents) == sorted(id(i) for i in intents)
    for change in changes:
        assert all(i.entity_key() == change.key for i in change.intents)
        # never backwards: no intent of the change outranks its winner
        assert all(i.rank() <= change.winner.rank() for i in change.intents)
    assert {c.key: c.winner for c in changes} == one_by_one(intents)


@given(st.lists(INTENTS, max_size=30), st.lists(st.integers(0, 40), max_size=5))
def test_batch_boundaries_do_not_change_the_outcome(intents: list[BaseIntent],
                                                    cuts: list[int]) -> None:
    # Applying each batch's winners with the writer's guard, batch after batch, ends where one
    # by one ends, however the stream was cut into batches
    state: dict[Key, BaseIntent] = {}
    for batch in batches(intents, cuts):
        for change in coalesce(batch):
            current = state.get(change.key)
            if current is None or change.winner.rank() >= current.rank():
                state[change.key] = change.winner
    assert state == one_by_one(intents)


@given(st.lists(roster_intents(), max_size=20))
@example([RosterStatus(tenant_id=7, occurred_at=T0, import_id=IMPORT, lecture_id=1,
                       status="parsing", error=text) for text in ("first", "second")])
def test_latest_is_the_field_one_by_one_leaves(intents: list[BaseIntent]) -> None:
    changes: list[Change[BaseIntent]] = coalesce(intents)
    for name in FIELDS:
        expected = fields_one_by_one(intents, name)
        assert {c.key: c.latest(name) for c in changes if c.latest(name) is not None} \
            == expected, name
