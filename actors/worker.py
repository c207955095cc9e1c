"""Entry module for dramatiq worker processes: ``dramatiq actors.worker --queues video``.

It reads the settings, finds the services, builds the platform's broker and declares every
actor on it. Which queues a process serves is chosen on the command line (see the Procfile):
a worker consumes every queue it has imported unless started with ``--queues``.
"""

from __future__ import annotations

from jobplatform.extras import missing_extra

try:
    from actors import ai, video
except ImportError as exc:
    missing = missing_extra(exc, "`dramatiq actors.worker`")
    if missing is None:
        raise
    raise missing from exc

from jobplatform.auth import keyring_for
from jobplatform.broker import build_broker
from jobplatform.logging import configure_logging
from jobplatform.settings import get_settings
from jobplatform.stack import ensure_services

keyring_for(get_settings())  # before any service: production refuses to run without a key
settings = ensure_services(get_settings()).apply(get_settings())
configure_logging(settings)
assert settings.redis_url is not None
broker = build_broker(settings, settings.redis_url)
if settings.metrics_port:
    from jobplatform.metrics import ActorMetrics

    broker.add_middleware(ActorMetrics(settings))
encode_video = video.register(broker, settings)
import_roster = ai.register(broker, settings)
