"""Marks the failure routes' own publishing, for the Sentry screens.

A dead letter or a callback published from the worker's main process carries the failed
task's message, arguments included. sentry_sdk's integrations of the broker's client may record
that traffic: sentry-sdk 2.0's Redis integration, with ``send_default_pii``, turns the
``LPUSH`` of a dead letter into a breadcrumb quoting it, and the next event of the main process
would carry it. The Sentry reporter drops every breadcrumb recorded while this mark is set.

Its own module so that the failure routes mark their publishing without importing the Sentry
reporter (which imports them) or sentry_sdk.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_publishing: ContextVar[bool] = ContextVar("celery_policies_publishing", default=False)


@contextmanager
def publishing_routes() -> Iterator[None]:
    """While failure routes publish, in this thread (or greenlet)."""
    token = _publishing.set(True)
    try:
        yield
    finally:
        _publishing.reset(token)


def in_publishing_routes() -> bool:
    return _publishing.get()
