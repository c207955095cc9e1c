"""The writer applies only signed intents: forged, tampered and unsigned ones are dead letters."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from jobplatform.auth import MAC_OPTION, REFUSED, Keyring, keyring_of
from jobplatform.broker import WRITE_INTENT, Queues, make_message
from jobplatform.emit import IntentEmitter
from jobplatform.settings import Settings
from schemas.intents import encode_intent
from tests.writer.conftest import WriterThread, query, scalar, wait_until
from tests.writer.intent_factory import queued, ready

OLD = Keyring({"k1": "old-secret-" + "o" * 32})
NEW = Keyring({"k2": "new-secret-" + "n" * 32})
BOTH = Keyring({"k2": "new-secret-" + "n" * 32, "k1": "old-secret-" + "o" * 32})


def _dead(url: str) -> list[tuple[Any, ...]]:
    return query(url, "SELECT reason, intent_id FROM writer_dead_letters ORDER BY id")


def _ledger(url: str) -> int:
    return int(scalar(url, "SELECT count(*) FROM writer_ledger"))


def test_forged_tampered_and_unsigned_intents_are_dead_lettered(
    settings: Settings, broker: Any, start_writer: Callable[..., WriterThread]
) -> None:
    url = str(settings.database_url)
    fast = settings.queue_writes_fast
    keyring = keyring_of(broker)
    # Given an honest video of tenant 7, queued and ready through the signing emitter
    video = uuid.uuid4()
    honest = IntentEmitter(broker, Queues.from_settings(settings))
    honest.emit(queued(video))
    honest.emit(ready(video))
    # And a hostile process that reaches Redis only: a video.ready pointing the same video at
    # other files, sent five ways
    forged = encode_intent(ready(video, seconds=9, attempt=5)) | {
        "hls_key": "tenants/7/videos/elsewhere/hls/master.m3u8"}

    def forged_message(**fields: Any) -> Any:
        return make_message(fast, WRITE_INTENT, forged | {"intent_id": str(uuid.uuid4())},
                            **fields)

    unsigned = forged_message()
    foreign_key = Keyring({"attacker": "a" * 40}).sign(forged_message())
    malformed = forged_message(**{MAC_OPTION: "k1-no-colon"})
    reused_mac = forged_message(**{MAC_OPTION: keyring.sign(forged_message()).options[MAC_OPTION]})
    # a signed message whose body was changed after signing
    signed = keyring.sign(forged_message())
    tampered = signed.copy(args=({**signed.args[0], "attempt": 6},))
    for message in (unsigned, foreign_key, malformed, reused_mac, tampered):
        broker.enqueue(message)

    # When the writer drains the queue
    runner = start_writer()
    wait_until(lambda: len(_dead(url)) == 5 and _ledger(url) == 2,
               message="five dead letters, two applied")
    runner.stop()

    # Then each forgery is a dead letter naming why, and the video is as the honest intents left it
    reasons = [reason for reason, _ in _dead(url)]
    assert all(r.startswith(REFUSED) for r in reasons), reasons
    assert "carries no MAC" in reasons[0]
    assert "key 'attacker', which this process does not accept" in reasons[1]
    assert "MAC is malformed" in reasons[2]
    assert all("does not match its body" in r for r in reasons[3:]), reasons
    assert query(url, "SELECT status, attempt, hls_key FROM videos WHERE id = %s", [video]) == [
        ("ready", 1, f"tenants/7/videos/{video}/hls/master.m3u8")]
    assert runner.writer.get_stats()["rejected"] == 5


def test_a_signed_intent_naming_another_tenants_files_is_dead_lettered(
    settings: Settings, broker: Any, start_writer: Callable[..., WriterThread]
) -> None:
    # Given a producer holding the key, whose intent for tenant 7 points at tenant 8's files
    url = str(settings.database_url)
    video = uuid.uuid4()
    body = encode_intent(ready(video)) | {"hls_key": "tenants/8/videos/v/hls/master.m3u8"}
    broker.enqueue(keyring_of(broker).sign(
        make_message(settings.queue_writes_fast, WRITE_INTENT, body)))
    runner = start_writer()
    wait_until(lambda: len(_dead(url)) == 1, message="one dead letter")
    runner.stop()
    [(reason, intent_id)] = _dead(url)
    assert "hls_key" in reason
    assert "is not under the tenant's prefix 'tenants/7/'" in reason
    assert str(intent_id) == body["intent_id"]
    assert scalar(url, "SELECT count(*) FROM videos") == 0


def test_keys_rotate_without_losing_a_message(
    settings: Settings, broker: Any, start_writer: Callable[..., WriterThread]
) -> None:
    url = str(settings.database_url)
    queues = Queues.from_settings(settings)
    # Given producers still signing with the old key and others already with the new one
    IntentEmitter(broker, queues, keyring=OLD).emit(queued(uuid.uuid4()))
    IntentEmitter(broker, queues, keyring=NEW).emit(queued(uuid.uuid4()))
    # When a writer accepting both drains them, both apply
    runner = start_writer(keyring=BOTH)
    wait_until(lambda: _ledger(url) == 2, message="both applied")
    runner.stop()
    # And once the old key is withdrawn, what it signs is refused
    IntentEmitter(broker, queues, keyring=OLD).emit(queued(uuid.uuid4()))
    runner = start_writer(keyring=NEW)
    wait_until(lambda: len(_dead(url)) == 1, message="the old key's intent refused")
    runner.stop()
    [(reason, _)] = _dead(url)
    assert "key 'k1', which this process does not accept (accepted: k2)" in reason
    assert _ledger(url) == 2
