"""Authenticated messages: each job and write intent carries an HMAC-SHA256 of its body.

Anyone who can reach Redis can put a message on a queue; only a holder of a key can sign one.
The platform's producers sign what they send (:meth:`Publisher.publish` its jobs,
:class:`~jobplatform.emit.IntentEmitter` its intents, ``jobplatform dead retry`` what it
re-sends); the actors (:class:`MessageAuth`, a broker middleware) and the writer (in its
decode step) refuse a message without a valid MAC and dead-letter it with the reason.

What is signed, the **canonical body**: the message's one positional argument (the job or the
intent) as compact JSON, its keys in the order they travel, UTF-8 (``pydantic_core.to_json``;
a text argument is taken as its own UTF-8 bytes), preceded by ``jobplatform/1``, a newline,
the actor name and a newline. A message with other arguments signs the JSON of
``{"args": [...], "kwargs": {...}}``. The MAC travels in the message's options as
``mac = "<key id>:<hex digest>"``. The other options are transport metadata (retries,
tracebacks, Redis ids) and are not covered; the body is all a consumer acts on.

Keys (:class:`Keyring`): ``AUTH_KEYS`` (``id=secret`` pairs, comma-separated) and/or
``AUTH_KEYS_FILE`` (one pair a line); every key listed is accepted, so keys rotate by adding the
new one everywhere, then signing with it (``AUTH_SIGNING_KEY``, else the first listed), then
removing the old one. In development, when none is configured, one key is generated in the
state folder (``<state dir>/auth/keys``) and shared by the processes using that folder; in
production a process refuses to start without one.

A signature proves who made a message, not that it is new: a copy of a signed message can be
put back on its queue. Intents are applied at most once (the writer's ledger) and never move an
entity backwards; a replayed job repeats work on its own tenant's data only.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dramatiq
import pydantic_core
from dramatiq.broker import MessageProxy
from dramatiq.middleware import Middleware

from jobplatform.errors import ConfigError
from jobplatform.logging import get_logger, redact
from jobplatform.settings import Settings

__all__ = [
    "DEAD_REASON_OPTION",
    "MAC_OPTION",
    "REFUSED",
    "Keyring",
    "MessageAuth",
    "MessageRefused",
    "canonical_body",
    "development_keys_file",
    "ensure_message_auth",
    "generate_secret",
    "keyring_for",
    "keyring_of",
]

#: The message option that carries ``"<key id>:<hex digest>"``.
MAC_OPTION = "mac"
#: The option an actor adds to a refused message's stored body (dramatiq's dead-letter set
#: keeps the body only).
DEAD_REASON_OPTION = "dead_reason"
#: How every refusal's reason begins (``jobplatform dead retry`` will not re-sign those).
REFUSED = "unauthenticated message"
#: Shortest secret accepted, in characters (``openssl rand -base64 32`` gives 44).
MIN_SECRET_CHARS = 32

_DOMAIN = b"jobplatform/1\n"
_KEY_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_DEV_KEYS = Path("auth") / "keys"

log = get_logger("jobplatform.auth")


class MessageRefused(dramatiq.errors.DramatiqError):
    """A message without a valid MAC; the message says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)  # type: ignore[no-untyped-call]
        self.reason = reason


def canonical_body(args: Sequence[Any], kwargs: Mapping[str, Any] | None = None) -> bytes:
    """The bytes a message's MAC covers, less the domain and actor (see the module)."""
    if len(args) == 1 and not kwargs:
        payload = args[0]
        if isinstance(payload, str):
            return payload.encode("utf-8", "surrogatepass")
        return pydantic_core.to_json(payload)
    return pydantic_core.to_json({"args": list(args), "kwargs": dict(kwargs or {})})


def generate_secret() -> str:
    """A new random secret for ``AUTH_KEYS`` (43 URL-safe characters, 256 bits)."""
    return secrets.token_urlsafe(32)


@dataclass(frozen=True, slots=True)
class _Key:
    id: str
    secret: bytes

    def __repr__(self) -> str:
        return f"_Key({self.id!r}, <secret>)"


class Keyring:
    """The keys one process accepts, and the one it signs with."""

    def __init__(self, keys: Mapping[str, str | bytes], signing: str | None = None) -> None:
        if not keys:
            raise ConfigError("AUTH_KEYS: no key given")
        parsed: dict[str, _Key] = {}
        for key_id, secret in keys.items():
            raw = secret.encode() if isinstance(secret, str) else bytes(secret)
            if not _KEY_ID.match(key_id):
                raise ConfigError(f"AUTH_KEYS: key id {key_id[:70]!r} must be 1 to 64 letters, "
                                  "digits, '.', '_' or '-'")
            if len(raw) < MIN_SECRET_CHARS:
                raise ConfigError(
                    f"AUTH_KEYS: the secret of key {key_id!r} has {len(raw)} characters; use at "
                    f"least {MIN_SECRET_CHARS} (`jobplatform keys new` makes one)")
            parsed[key_id] = _Key(key_id, raw)
        signing = signing or next(iter(parsed))
        if signing not in parsed:
            raise ConfigError(f"AUTH_SIGNING_KEY: {signing!r} is not one of the keys "
                              f"({', '.join(parsed)})")
        self._keys = parsed
        self._signing = parsed[signing]
        self._started: dict[tuple[str, str], hmac.HMAC] = {}
        redact(*self.secrets())
        self.origin = "given"
        """Where the keys came from (settings, a file, the development key), for messages."""

    def __repr__(self) -> str:
        return f"Keyring({', '.join(self._keys)}; signing {self._signing.id!r})"

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(self._keys)

    @property
    def signing_key_id(self) -> str:
        return self._signing.id

    def secrets(self) -> tuple[str, ...]:
        """The secrets as text, for the log redaction (:func:`jobplatform.logging.redact`)."""
        return tuple(k.secret.decode("utf-8", "replace") for k in self._keys.values())

    def _digest(self, key: _Key, actor: str, body: bytes) -> str:
        # The HMAC keyed and fed the domain and the actor once per (key, actor), then copied:
        # a check hashes the body alone.
        started = self._started.get((key.id, actor))
        if started is None:
            started = hmac.new(key.secret, _DOMAIN + actor.encode() + b"\n", hashlib.sha256)
            self._started[(key.id, actor)] = started
        mac = started.copy()
        mac.update(body)
        return mac.hexdigest()

    def mac(self, actor: str, body: bytes) -> str:
        """The MAC option's value for ``body`` (:func:`canonical_body`) sent to ``actor``."""
        return f"{self._signing.id}:{self._digest(self._signing, actor, body)}"

    def sign(self, message: dramatiq.Message[Any]) -> dramatiq.Message[Any]:
        """A copy of ``message`` carrying its MAC."""
        body = canonical_body(message.args, message.kwargs)
        return message.copy(options={MAC_OPTION: self.mac(message.actor_name, body)})

    def check(self, actor: str, body: bytes, mac: object) -> str | None:
        """Why ``body`` sent to ``actor`` with ``mac`` is refused; None when it is authentic."""
        if mac is None:
            return f"{REFUSED}: it carries no MAC (option {MAC_OPTION!r}); only the platform's " \
                   "signing producers may send to this queue"
        if not isinstance(mac, str) or mac.count(":") != 1:
            return f"{REFUSED}: its MAC is malformed (expected '<key id>:<hex digest>')"
        key_id, _, digest = mac.partition(":")
        key = self._keys.get(key_id)
        if key is None:
            return (f"{REFUSED}: signed with key {key_id[:70]!r}, which this process does not "
                    f"accept (accepted: {', '.join(self._keys)})")
        if len(digest) != 64 or not digest.isascii() or not hmac.compare_digest(
                digest, self._digest(key, actor, body)):
            return f"{REFUSED}: its MAC does not match its body (key {key_id!r})"
        return None

    def verify(self, message: dramatiq.Message[Any] | MessageProxy) -> str | None:
        """Why ``message`` is refused; None when it is authentic."""
        body = canonical_body(message.args, message.kwargs)
        return self.check(message.actor_name, body, message.options.get(MAC_OPTION))


# --- from the settings ---------------------------------------------------------------------

def parse_keys(text: str, where: str) -> dict[str, str]:
    """``id=secret`` pairs separated by commas, spaces or newlines (``#`` starts a comment)."""
    keys: dict[str, str] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0]
        for item in line.replace(",", " ").split():
            key_id, sep, secret = item.partition("=")
            if not sep or not key_id or not secret:
                raise ConfigError(f"{where}: expected id=secret pairs (got an item without '=')")
            if key_id in keys:
                raise ConfigError(f"{where}: key id {key_id!r} is given twice")
            keys[key_id] = secret
    return keys


_CACHE: dict[tuple[Any, ...], Keyring] = {}
_CACHE_LOCK = threading.Lock()


def keyring_for(settings: Settings) -> Keyring:
    """The keyring the settings name (see the module); raises :class:`ConfigError`.

    Production without a configured key is an error; development without one uses (or makes)
    ``<state dir>/auth/keys``.
    """
    auth = settings.auth
    configured = auth.keys.get_secret_value() if auth.keys is not None else ""
    cache_key = (configured, auth.keys_file, auth.signing_key, settings.production,
                 str(settings.jobplatform_state_dir))
    with _CACHE_LOCK:
        found = _CACHE.get(cache_key)
        if found is None:
            found = _CACHE[cache_key] = _load(settings, configured)
        return found


def _load(settings: Settings, configured: str) -> Keyring:
    auth = settings.auth
    keys = parse_keys(configured, "AUTH_KEYS") if configured else {}
    origin = "AUTH_KEYS"
    if auth.keys_file is not None:
        try:
            text = auth.keys_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"AUTH_KEYS_FILE: cannot read {auth.keys_file} "
                              f"({exc.strerror or exc})") from exc
        for key_id, secret in parse_keys(text, "AUTH_KEYS_FILE").items():
            if key_id in keys:
                raise ConfigError(f"AUTH_KEYS_FILE: key id {key_id!r} is also in AUTH_KEYS")
            keys[key_id] = secret
        origin = "AUTH_KEYS_FILE" if not configured else "AUTH_KEYS and AUTH_KEYS_FILE"
    if not keys:
        if settings.production:
            raise ConfigError(
                "production: jobs and write intents are signed and no key is configured: set "
                "AUTH_KEYS to id=secret pairs (comma-separated; the first signs, or "
                "AUTH_SIGNING_KEY), or AUTH_KEYS_FILE to a file of them, the same in every "
                "process (`jobplatform keys new` makes one)")
        path = development_keys_file(settings)
        keys = parse_keys(_development_keys(path), str(path))
        origin = f"the development key in {path}"
    ring = Keyring(keys, auth.signing_key)
    ring.origin = origin
    return ring


def development_keys_file(settings: Settings) -> Path:
    """Where development processes without ``AUTH_KEYS`` keep their shared key (made by the
    first of them to need it): ``<state dir>/auth/keys``. Another process pointed at this file
    with ``AUTH_KEYS_FILE`` shares it."""
    return settings.jobplatform_state_dir / _DEV_KEYS


def _development_keys(path: Path) -> str:
    """The state folder's key file, made once (atomically: concurrent processes agree)."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    text = f"# development key, made by the first process without AUTH_KEYS\n" \
           f"dev-{secrets.token_hex(4)}={generate_secret()}\n"
    temp = path.with_name(f".keys-{os.getpid()}-{secrets.token_hex(4)}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    try:
        os.link(temp, path)  # fails when another process made it first
    except FileExistsError:
        pass
    finally:
        temp.unlink()
    return path.read_text(encoding="utf-8")


# --- the broker's part ---------------------------------------------------------------------

# Store the refused message's body with its reason, if the queue still holds it.
_STORE_REASON = """
if redis.call('hexists', KEYS[1], ARGV[1]) == 1 then
  redis.call('hset', KEYS[1], ARGV[1], ARGV[2])
end
"""


class MessageAuth(Middleware):
    """Carries a broker's :class:`Keyring`; in a worker, refuses messages without a valid MAC.

    A refused message is not run and not retried: it goes to dramatiq's dead-letter set
    (``<queue>.XQ``) with the reason in its ``dead_reason`` option, and a warning names the
    queue, actor, message id and reason (never the body).
    """

    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring

    def before_process_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        reason = self.keyring.verify(message)
        if reason is None:
            return
        log.warning(
            "message refused", reason=reason, queue=message.queue_name,
            actor=message.actor_name, message_id=message.message_id)
        message.options[DEAD_REASON_OPTION] = reason
        message.stuff_exception(MessageRefused(reason))
        message.fail()
        client = getattr(broker, "client", None)
        redis_id = message.options.get("redis_message_id")
        if client is not None and redis_id is not None:
            key = f"{getattr(broker, 'namespace', '')}:{message.queue_name}.msgs"
            try:
                client.eval(_STORE_REASON, 1, key, redis_id, message.encode())
            except Exception as exc:  # the refusal stands; only its note is lost
                log.warning(
                    "could not store the refusal's reason", error=type(exc).__name__)


def keyring_of(broker: dramatiq.Broker) -> Keyring:
    """The keyring of a broker built by :func:`jobplatform.broker.build_broker`."""
    for middleware in broker.middleware:
        if isinstance(middleware, MessageAuth):
            return middleware.keyring
    raise ConfigError(
        "the broker carries no message keys: build it with jobplatform.broker.build_broker "
        "(or add jobplatform.auth.MessageAuth(keyring_for(settings)) to its middleware)")


def ensure_message_auth(broker: dramatiq.Broker, settings: Settings) -> Keyring:
    """The broker's keyring, adding :class:`MessageAuth` first when it has none (actors call
    this where they are declared, so no worker runs them unverified)."""
    try:
        return keyring_of(broker)
    except ConfigError:
        keyring = keyring_for(settings)
        broker.add_middleware(MessageAuth(keyring), before=_first_middleware(broker))
        return keyring


def _first_middleware(broker: dramatiq.Broker) -> type[Middleware] | None:
    return type(broker.middleware[0]) if broker.middleware else None
