"""The Celery app that ``benchmarks/sentry.py`` runs in real workers.

Start it as ``celery -A benchmarks._sentry_app worker --policies FILE ...`` from the repository
root (with the root on ``PYTHONPATH``); ``sentry.py`` does this for you. One task,
``bench.fail``, raises ``ValueError`` at once. ``celery_policies.install(app)`` is called and
every variant's worker is started with a policy file: with a ``sentry:`` section the plugin
initialises sentry_sdk itself, in the worker's main process, and reports each final failure;
without one Sentry is off. Nothing here initialises sentry_sdk. The broker and the result
backend come from ``$BENCH_BROKER_URL`` and ``$BENCH_RESULT_BACKEND``.

When the worker is ready to consume, this module logs one line (at WARNING, so it shows at
any log level): ``bench-ready <epoch seconds> <JSON>``. The time is read in the worker just
before it logs ``ready.`` and enters its event loop, so the benchmark's clock starts there and
the worker's start-up is not measured. The JSON (``describe``) is what the worker really set up
for Sentry and for ``bench.fail``, so the benchmark can check each worker runs its variant.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import sentry_sdk
from benchmarks._workers import READY_MARK
from celery import Celery, signals

import celery_policies
from celery_policies.worker.runtime import Runtime

#: The name of the benchmarked task.
TASK_NAME = "bench.fail"
#: The message of the task's exception.
FAILURE_MESSAGE = "benchmark failure"

log = logging.getLogger("bench")


def fail() -> None:
    """The benchmarked task: fails at once, so the worker's cost per failure is what counts."""
    raise ValueError(FAILURE_MESSAGE)


def create_app(broker_url: str, result_backend: str | None) -> tuple[Celery, Runtime]:
    """The app with ``bench.fail`` registered and the plugin installed, and its runtime."""
    app = Celery("bench", broker=broker_url, backend=result_backend, set_as_current=False)
    app.conf.update(
        broker_connection_retry_on_startup=True,
        # No pidbox queue: nothing but the benchmark's own queue is consumed.
        worker_enable_remote_control=False,
        # Celery's default, spelled out: the plugin sets Sentry up before the pool forks.
        worker_pool_start_method="fork",
        result_expires=3600,
    )
    app.task(name=TASK_NAME, shared=False)(fail)
    return app, celery_policies.install(app)


def describe(app: Celery, runtime: Runtime) -> dict[str, Any]:
    """What the worker set up: whether the plugin reports to Sentry, through which client and
    DSN, with which ``max_events_per_minute``, and ``bench.fail``'s ``max_retries``."""
    client = sentry_sdk.get_client()
    reporter = runtime.reporter
    return {
        "reporter": reporter is not None,
        "client_active": client.is_active(),
        "dsn": str(client.dsn) if client.is_active() and client.dsn else None,
        "max_events_per_minute": (reporter.config.max_events_per_minute
                                  if reporter is not None else None),
        "max_retries": app.tasks[TASK_NAME].max_retries,
    }


app, runtime = create_app(os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/7"),
                          os.environ.get("BENCH_RESULT_BACKEND", "redis://127.0.0.1:6379/8"))


@signals.worker_ready.connect
def _report_ready(sender: Any = None, **_: Any) -> None:
    """Log the time the worker starts consuming, and what it set up."""
    started = time.time()
    if getattr(sender, "app", None) is app:
        log.warning("%s %.6f %s", READY_MARK, started, json.dumps(describe(app, runtime)))
