"""A Celery app whose tasks set reliability options in code, for tests of what the file
overrides. Never started as a worker."""

from __future__ import annotations

from celery import Celery

app = Celery("codeapp", broker="memory://")
app.conf.task_acks_late = True


@app.task(name="code.fetch", autoretry_for=(TimeoutError,), max_retries=7, time_limit=120,
          retry_backoff=True)
def fetch() -> None:
    """Sets its own retries and time limit."""


@app.task(name="code.plain")
def plain() -> None:
    """Sets nothing: app config and Celery defaults apply."""
