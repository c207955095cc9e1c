"""Properties of the contracts, over generated intents, jobs and arbitrary JSON."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from jobplatform.auth import Keyring, canonical_body
from jobplatform.broker import WRITE_INTENT, make_message
from jobplatform.kinds import default_registry
from schemas import BaseIntent, DecodeError, decode_intent, decode_job, encode_intent
from schemas.intents import intent_json
from tests.strategies import INTENTS, JSON, jobs

KEYRING = Keyring({"p": "p" * 32})


def _decode_error(decode: Any, data: Any) -> DecodeError | None:
    """The DecodeError ``decode(data)`` raises (any other exception fails the test)."""
    try:
        decode(data)
    except DecodeError as exc:
        return exc
    return None


@given(INTENTS)
def test_an_intent_survives_its_journey(intent: BaseIntent) -> None:
    # as a dict, as the queue's JSON bytes, and through the registry every process uses
    assert decode_intent(encode_intent(intent)) == intent
    assert decode_intent(intent_json(intent)) == intent
    assert default_registry().decode_intent(json.loads(intent_json(intent))) == intent


@given(jobs())
def test_a_job_survives_its_journey(job: Any) -> None:
    assert decode_job(job.model_dump(mode="json")) == job
    assert decode_job(job.model_dump_json()) == job


@given(INTENTS)
def test_a_signature_survives_the_queue_and_covers_every_field(intent: BaseIntent) -> None:
    # Given a signed intent as the broker stores it (dramatiq's JSON encoding) ...
    message = KEYRING.sign(make_message("writes.fast", WRITE_INTENT, encode_intent(intent)))
    received = json.loads(json.dumps(message.asdict(), separators=(",", ":")))
    mac = received["options"]["mac"]
    assert KEYRING.check(WRITE_INTENT, canonical_body(received["args"]), mac) is None
    # ... any change of a field's value breaks it
    for field, value in received["args"][0].items():
        changed = {**received["args"][0], field: [value]}
        assert KEYRING.check(WRITE_INTENT, canonical_body([changed]), mac) is not None


@given(JSON)
def test_anything_that_is_not_an_intent_is_a_decode_error(value: Any) -> None:
    for data in (value, json.dumps(value)):
        for decode in (decode_intent, default_registry().decode_intent):
            error = _decode_error(decode, data)
            if error is not None:
                assert str(error).startswith("invalid intent")
                assert all(isinstance(p, str) for p in error.paths)


@given(INTENTS, st.data())
def test_a_changed_field_decodes_or_names_a_field(intent: BaseIntent, data: st.DataObject) -> None:
    # Given a valid intent with one field replaced by any JSON value
    payload = encode_intent(intent)
    field = data.draw(st.sampled_from(sorted(payload)))
    payload[field] = data.draw(JSON)
    # Then it decodes (and re-encodes to what decoded), or the error names what is wrong
    error = _decode_error(decode_intent, payload)
    if error is not None:
        assert error.paths
        assert all(p.split(".")[0] in payload or p in ("", "kind") for p in error.paths), error
    else:
        decoded = decode_intent(payload)
        assert decode_intent(encode_intent(decoded)) == decoded
