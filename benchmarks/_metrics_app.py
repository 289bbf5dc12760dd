"""The Celery app that ``benchmarks/metrics.py`` runs in real workers.

Start it as ``celery -A benchmarks._metrics_app worker --policies FILE ...`` from the
repository root (with the root on ``PYTHONPATH``). The plugin is installed, and two tasks are
registered with no options in their code: ``bench.noop`` (``_runtime_app``'s, which does
nothing) and ``bench.fail``, which raises an exception the benchmark's policy file does not
retry, so each message is one final failure. Both workers of a round run this same app; only
``--policies-metrics-port`` differs. The ``bench-ready`` line comes from ``_runtime_app``.

``$BENCH_FILL_METRICS`` (``TASKS,EXCEPTIONS``) makes the worker fill its metrics, once it is
ready, with the series of that many task names each retried after that many exception types
(``fill``), so that a scrape of a worker that has seen a large fleet's variety can be timed
without running that many tasks.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from benchmarks._runtime_app import TASK_NAME, create_app
from celery import signals

from celery_policies.worker.install import runtime_of

#: The failing task's name.
FAIL_NAME = "bench.fail"
#: ``TASKS,EXCEPTIONS``: the series a worker fills its metrics with once it is ready.
FILL_ENV = "BENCH_FILL_METRICS"
#: What the worker logs once it has filled its metrics, followed by the series written.
FILLED_MARK = "bench-filled"

log = logging.getLogger("bench")


class Unretried(Exception):
    """What ``bench.fail`` raises: the benchmark's policy retries only ConnectionError."""


def fail() -> None:
    """The failure path's task: fails for good at once (``not_retryable``)."""
    raise Unretried("bench")


def fill(metrics: Any, tasks: int, exceptions: int) -> int:
    """Record in ``metrics`` (a ``WorkerMetrics``) what a worker would after ``tasks`` task
    names had each been retried after ``exceptions`` exception types, then succeeded, failed
    for good, been dead-lettered, redelivered and timed out; return the series written."""
    series = 0
    for number in range(tasks):
        labels = (f"bench.fleet.task_{number:04d}", f"policy-{number % 50}", "celery")
        for kind in range(exceptions):
            metrics.retried(labels, f"bench.errors.Error{kind:02d}", 0.5 * (kind + 1))
        metrics.succeeded(labels, 2)
        metrics.failed(labels, "max_retries", 4)
        metrics.routed(labels, "dead_letter", "published")
        metrics.redelivered(labels)
        metrics.timed_out(labels, "soft")
        series += exceptions + 5
    return series


app = create_app("plugin", os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/5"),
                 os.environ.get("BENCH_RESULT_BACKEND", "redis://127.0.0.1:6379/6"))
app.task(name=FAIL_NAME, shared=False)(fail)
assert TASK_NAME in app.tasks


@signals.worker_ready.connect
def _fill_metrics(sender: Any = None, **_: Any) -> None:
    """With ``$BENCH_FILL_METRICS``, fill the worker's metrics (see the module docstring)."""
    wanted = os.environ.get(FILL_ENV)
    if not wanted:
        return
    runtime = runtime_of(app)
    metrics = getattr(runtime, "metrics", None)
    if metrics is None:
        log.error("%s: the worker has no metrics to fill (no --policies-metrics-port?)",
                  FILL_ENV)
        return
    tasks, exceptions = (int(part) for part in wanted.split(","))
    log.warning("%s %d", FILLED_MARK, fill(metrics, tasks, exceptions))
