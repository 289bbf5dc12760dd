"""How the tests' own client processes read task results.

Celery before 5.7 can deadlock a client on its Redis result backend: an ``AsyncResult``
collected by the garbage collector while the same thread is inside a pub/sub command
re-enters redis-py's ``PubSub._lock`` (``AsyncResult.__del__`` -> ``cancel_for`` ->
``unsubscribe``; celery#10477, fixed in 5.7 by serialising pub/sub in ``ResultConsumer``).
Tests that send hundreds of tasks hit it on 5.3-5.6. Such a client reads results by polling
instead (Celery's ``SyncBackendMixin``, as its non-pub/sub backends do); on 5.7 the client
keeps Celery's own pub/sub consumer. Workers are unaffected: they only store results.
"""

from __future__ import annotations

from typing import Any

from celery.backends.base import SyncBackendMixin
from celery.backends.redis import RedisBackend, ResultConsumer

#: Whether this Celery's Redis result consumer survives re-entry (celery#10477, 5.7).
PUBSUB_IS_REENTRANT = hasattr(ResultConsumer, "_reset_sync")


class PollingRedisBackend(SyncBackendMixin, RedisBackend):
    """The Redis result backend, read by polling: no pub/sub, so no ``__del__`` re-entry."""

    def on_task_call(self, producer: Any, task_id: str) -> None:
        """Do not subscribe to each sent task's result channel."""


def client_backend(url: str) -> str:
    """The result backend URL a test client uses for ``url`` (a redis:// URL)."""
    if PUBSUB_IS_REENTRANT or not url.startswith("redis"):
        return url
    return f"{PollingRedisBackend.__module__}.{PollingRedisBackend.__name__}+{url}"
