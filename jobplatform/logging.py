"""structlog set-up: JSON lines in production, readable console output in development.

Standard-library loggers (dramatiq's, psycopg's, botocore's) are routed through the same
processors, so every line of a process has one format.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

from jobplatform.settings import Settings

_SHARED: list[structlog.types.Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
    structlog.processors.StackInfoRenderer(),
]


def configure_logging(settings: Settings, *, stream: Any = None) -> None:
    """Configure structlog and the standard library's root logger for this process."""
    fmt = settings.log_format or ("json" if settings.production else "console")
    renderer: structlog.types.Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
        shared: list[structlog.types.Processor] = [*_SHARED, structlog.processors.dict_tracebacks]
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=(stream or sys.stderr).isatty())
        shared = list(_SHARED)

    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter)
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
