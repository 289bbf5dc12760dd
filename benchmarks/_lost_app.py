"""The Celery app that ``benchmarks/lost_redis.py`` runs in real workers.

Start it as ``celery -A benchmarks._lost_app worker --policies FILE ...`` from the repository
root (with the root on ``PYTHONPATH``); ``lost_redis.py`` does this for you. One task,
``bench.lost.collect``, works for a while and then counts its run in the Redis hash the
benchmark names, so that a task that never ran and a task that ran twice both show.

Environment: ``BENCH_BROKER_URL`` (a redis:// URL; the counts are kept in the same database),
``BENCH_VISIBILITY_TIMEOUT`` and ``BENCH_SWEEP`` (seconds: kombu's ``visibility_timeout``, and
``unacked_restore_interval`` with ``unacked_restore_throttle`` 1, which kombu before 5.7
ignores).
"""

from __future__ import annotations

import os
import time

import redis
from celery import Celery

import celery_policies

#: The benchmarked task's name.
TASK_NAME = "bench.lost.collect"

BROKER_URL = os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/9")
app = Celery("bench_lost", broker=BROKER_URL, set_as_current=False)
app.conf.update(
    broker_connection_retry_on_startup=True,
    broker_transport_options={
        "visibility_timeout": float(os.environ.get("BENCH_VISIBILITY_TIMEOUT", "3")),
        "unacked_restore_interval": float(os.environ.get("BENCH_SWEEP", "1")),
        "unacked_restore_throttle": 1,
    },
)
counts = redis.Redis.from_url(BROKER_URL)


@app.task(name=TASK_NAME, shared=False)
def collect(key: str, item: int, seconds: float) -> None:
    """Work for ``seconds``, then add one run of ``item`` to the Redis hash ``key``."""
    time.sleep(seconds)
    counts.hincrby(key, str(item), 1)


celery_policies.install(app)
