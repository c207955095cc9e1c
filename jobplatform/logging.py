"""structlog set-up: JSON lines in production, readable console output in development.

Standard-library loggers (dramatiq's, psycopg's, botocore's) are routed through the same
processors, so every line of a process has one format.

What never reaches a line:

- **local variables**: tracebacks (JSON or console) list frames, never their locals, which
  hold payloads, settings and keys;
- **message bodies**: dramatiq logs a message as ``actor(args...)``; here it is
  ``actor(message <id>)``;
- **secrets**: the message keys, the S3 secret key and the passwords of the configured URLs are
  replaced by ``***`` wherever they appear (:func:`redact` adds more), and so is the password
  of any ``scheme://user:password@host`` URL.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from typing import Any
from urllib.parse import unquote, urlsplit

import structlog
from structlog.dev import RichTracebackFormatter, plain_traceback
from structlog.processors import ExceptionRenderer
from structlog.tracebacks import ExceptionDictTransformer

from jobplatform.settings import Settings

__all__ = ["configure_logging", "get_logger", "redact", "scrub"]

_SHARED: list[structlog.types.Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
    structlog.processors.StackInfoRenderer(),
]

MASK = "***"
_URL_PASSWORD = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s:/@]*:)[^\s@/]+@")
_secrets: set[str] = set()
_secrets_lock = threading.Lock()


def redact(*values: str | None) -> None:
    """Never let ``values`` appear in a log line of this process (shorter than 6 characters:
    ignored, they would mask ordinary words)."""
    with _secrets_lock:
        _secrets.update(v for v in values if v and len(v) >= 6)


def scrub(text: str) -> str:
    """``text`` with every registered secret and every URL's password replaced by ``***``."""
    if "://" in text:
        text = _URL_PASSWORD.sub(lambda m: m.group("head") + MASK + "@", text)
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def _settings_secrets(settings: Settings) -> list[str]:
    found = [settings.s3.secret_access_key]
    if settings.auth.keys is not None:
        found.append(settings.auth.keys.get_secret_value())
        found += [pair.partition("=")[2] for pair in
                  settings.auth.keys.get_secret_value().replace(",", " ").split()]
    for url in (settings.database_url, settings.redis_url):
        if url:
            try:
                password = urlsplit(url).password
            except ValueError:
                continue
            if password:
                found += [password, unquote(password)]
    return [s for s in found if s]


class _Scrubbing(structlog.stdlib.ProcessorFormatter):
    """The platform's formatter, with :func:`scrub` applied to each finished line."""

    def format(self, record: logging.LogRecord) -> str:
        return scrub(super().format(record))


class _NoMessageBodies(logging.Filter):
    """dramatiq's log arguments that are messages become ``actor(message <id>)``."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and args:
            record.args = tuple(_summary(a) for a in args)
        return True


def _summary(value: Any) -> Any:
    from dramatiq.broker import MessageProxy
    from dramatiq.message import Message

    if isinstance(value, Message | MessageProxy):
        return f"{value.actor_name}(message {value.message_id})"
    return value


def configure_logging(settings: Settings, *, stream: Any = None) -> None:
    """Configure structlog and the standard library's root logger for this process."""
    fmt = settings.log_format or ("json" if settings.production else "console")
    out = stream or sys.stderr
    renderer: structlog.types.Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
        no_locals = ExceptionRenderer(ExceptionDictTransformer(show_locals=False))
        shared: list[structlog.types.Processor] = [*_SHARED, no_locals]
    else:
        colors = out.isatty()
        renderer = structlog.dev.ConsoleRenderer(
            colors=colors,
            exception_formatter=RichTracebackFormatter(show_locals=False) if colors
            else plain_traceback)
        shared = list(_SHARED)
    redact(*_settings_secrets(settings))  # a Keyring registers its own secrets when made

    # The list is changed in place: loggers cached on first use hold it, and must follow a
    # second configuration (and structlog's capture_logs, which edits the configured list)
    processors = structlog.get_config()["processors"]
    processors[:] = [*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter]
    structlog.configure(
        processors=processors,
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = _Scrubbing(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    handler.addFilter(_NoMessageBodies())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)
    # Chatty third-party loggers stay at WARNING unless debugging.
    if settings.log_level != "DEBUG":
        for name in ("botocore", "boto3", "urllib3", "s3transfer", "werkzeug"):
            logging.getLogger(name).setLevel(logging.WARNING)


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name)
    return logger
