"""The Celery app that ``benchmarks/runtime.py`` runs in real workers.

Start it as ``celery -A benchmarks._runtime_app worker ...`` from the repository root (with the
root on ``PYTHONPATH``); ``runtime.py`` does this for you. One no-op task, ``bench.noop``,
is registered in one of two ways, chosen by ``$BENCH_RUNTIME_VARIANT``:

* ``plugin``: the task's code sets nothing; ``celery_policies.install(app)`` is called and the
  worker is started with ``--policies FILE``, a file holding ``POLICY_YAML``;
* ``decorator`` (the default): the same settings written as ``@app.task(...)`` arguments
  (``DECORATOR_OPTIONS``), and the plugin is not installed.

Both variants run the same task name with the same function, so a worker of either kind
consumes the same messages. The broker and the result backend come from
``$BENCH_BROKER_URL`` and ``$BENCH_RESULT_BACKEND``.

When the worker is ready to consume, this module logs one line (at WARNING, so it shows at
any log level): ``bench-ready <epoch seconds> <JSON>``. The time is read in the worker just
before it logs ``ready.`` and enters its event loop: the benchmark's clock starts there, so the
worker's start-up is not measured. The JSON is what the worker really applied to
``bench.noop`` (``describe``), so the benchmark can check the two variants are equivalent.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

from benchmarks._workers import READY_MARK
from celery import Celery, signals
from celery.app.task import Task

import celery_policies

#: The environment variable that selects the variant.
VARIANT_ENV = "BENCH_RUNTIME_VARIANT"
VARIANTS = ("plugin", "decorator")
#: The name of the benchmarked task, in both variants.
TASK_NAME = "bench.noop"

#: The ``plugin`` variant's policy file.
POLICY_YAML = """\
version: 1
policies:
  - match: "bench.*"
    autoretry_for: [ConnectionError]
    max_retries: 3
    retry_backoff: 1s
    retry_backoff_max: 10m
    retry_jitter: full
    acks_late: true
    time_limit: 60s
    soft_time_limit: 50s
"""

#: The ``decorator`` variant: the same settings as task options.
DECORATOR_OPTIONS: dict[str, Any] = {
    "autoretry_for": (ConnectionError,),
    "max_retries": 3,
    "retry_backoff": 1,
    "retry_backoff_max": 600,
    "retry_jitter": True,
    "acks_late": True,
    "time_limit": 60,
    "soft_time_limit": 50,
}

log = logging.getLogger("bench")


def noop() -> None:
    """The benchmarked task: does nothing, so the worker's own cost per task is what counts."""


def create_app(variant: str, broker_url: str, result_backend: str | None) -> Celery:
    """An app with ``bench.noop`` registered as ``variant`` says (see the module docstring)."""
    if variant not in VARIANTS:
        raise ValueError(f"{VARIANT_ENV} must be one of {', '.join(VARIANTS)}, not {variant!r}")
    app = Celery("bench", broker=broker_url, backend=result_backend, set_as_current=False)
    app.conf.update(
        broker_connection_retry_on_startup=True,
        # No pidbox queue: nothing but the benchmark's own queue is consumed.
        worker_enable_remote_control=False,
        result_expires=3600,
    )
    # shared=False: several apps of one process (runtime.py's per-call part) each keep their own.
    if variant == "plugin":
        app.task(name=TASK_NAME, shared=False)(noop)
        celery_policies.install(app)
    else:
        app.task(name=TASK_NAME, shared=False, **DECORATOR_OPTIONS)(noop)
    return app


def wrapper_of(task: Task) -> str:
    """Which retry wrapper, if any, is the task's ``run``."""
    if "_celery_policies_run" in task.__dict__:
        return "celery-policies"
    if "_orig_run" in task.__dict__:
        return "celery autoretry"
    return "none"


def describe(task: Task) -> dict[str, Any]:
    """The reliability settings ``task`` carries, normalised so that both variants compare.

    Durations become float seconds and ``retry_jitter`` True/False becomes ``full``/``none``
    (the file's spelling). ``wrapper`` says which retry wrapper runs the task.
    """
    jitter = getattr(task, "retry_jitter", True)
    if isinstance(jitter, bool):
        jitter = "full" if jitter else "none"

    def seconds(value: Any) -> float | None:
        return None if value is None else float(value)

    return {
        "acks_late": task.acks_late,
        "time_limit": seconds(task.time_limit),
        "soft_time_limit": seconds(task.soft_time_limit),
        "max_retries": task.max_retries,
        "autoretry_for": [exc.__qualname__ for exc in getattr(task, "autoretry_for", ())],
        "retry_backoff": seconds(getattr(task, "retry_backoff", None)),
        "retry_backoff_max": seconds(getattr(task, "retry_backoff_max", None)),
        "retry_jitter": jitter,
        "wrapper": wrapper_of(task),
    }


@signals.worker_ready.connect
def _report_ready(sender: Any = None, **_: Any) -> None:
    """Log the time the worker starts consuming, and what it applied to ``bench.noop``."""
    started = time.time()
    tasks = getattr(getattr(sender, "app", None), "tasks", {})
    if TASK_NAME in tasks:
        log.warning("%s %.6f %s", READY_MARK, started, json.dumps(describe(tasks[TASK_NAME])))


app = create_app(os.environ.get(VARIANT_ENV, "decorator"),
                 os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/5"),
                 os.environ.get("BENCH_RESULT_BACKEND", "redis://127.0.0.1:6379/6"))
