"""A Celery app whose tasks set reliability options in code, for tests of what the file
overrides. Never started as a worker."""

from __future__ import annotations

from celery import Celery

app = Celery("codeapp", broker="memory://")
app.conf.task_acks_late = True
# shared=False: Celery adds a shared task (its default) to every app finalized afterwards, so
# apps that later tests load (examples.shop) would gain code.fetch and code.plain.


@app.task(name="code.fetch", autoretry_for=(TimeoutError,), max_retries=7, time_limit=120,
          retry_backoff=True, shared=False)
def fetch() -> None:
    """Sets its own retries and time limit."""


@app.task(name="code.plain", shared=False)
def plain() -> None:
    """Sets nothing: app config and Celery defaults apply."""
