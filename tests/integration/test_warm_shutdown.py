"""A task that fails as the worker begins a warm shutdown (SIGTERM) still takes its routes.

Deploys stop workers with SIGTERM while tasks run. On Celery 5.3-5.6 a task that ends about
0.2 s into the shutdown can have its result never read by the main process: no failure
route, and a 30 s stop (docs/compatibility.md, ``compat.READS_RESULTS_AT_WARM_SHUTDOWN``).
Celery 5.7 reads it; this proves the plugin's routes then run, on both brokers, at the
timings that lose the dead letter on 5.5.3.
"""

from __future__ import annotations

import signal
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from celery_policies.compat import READS_RESULTS_AT_WARM_SHUTDOWN
from tests.support.deadletters import of, read
from tests.support.workers import Worker, delete_queue, wait_for

HERE = Path(__file__).resolve().parent
#: How long the task runs after it starts, in seconds: on 5.5.3, 0.2 and 0.25 s after the
#: SIGTERM (0.2 to 0.25 s) missed the result in 8 runs out of 11.
TIMINGS = [0.2, 0.25]
#: A stop without the 30 s wait takes a few seconds on a loaded machine.
STOP_TIMEOUT = 20.0

pytestmark = pytest.mark.skipif(
    not READS_RESULTS_AT_WARM_SHUTDOWN,
    reason="Celery 5.3-5.6 can miss the result of a task ending as a warm shutdown begins "
           "(docs/compatibility.md)")


@pytest.mark.parametrize("seconds", TIMINGS)
def test_a_task_failing_as_the_worker_stops_is_dead_lettered_and_the_worker_stops_at_once(
        client: Celery, broker: str, counters: Any, key: str, tmp_path: Path,
        seconds: float) -> None:
    queue, dlq = f"warm.{uuid.uuid4().hex[:12]}", f"warm.{uuid.uuid4().hex[:12]}.dlq"
    # acks_late off: the message is acknowledged as the task starts, so the dead letter is
    # the only record of the failure.
    policies = tmp_path / "policies.yaml"
    policies.write_text((HERE / "deadletters.yaml").read_text().replace(
        "acks_late: true", "acks_late: false"))
    worker = Worker(broker, queue, tmp_path / "worker.log", policies, concurrency=2,
                    env={"TEST_DLQ": dlq, "TEST_DEFAULT_QUEUE": queue}).start()
    try:
        result = client.send_task("proj.dlq.slow_fail", [key, seconds], queue=queue)
        assert wait_for(lambda: counters.llen(key) >= 1, timeout=30), "the task never started"
        assert worker.process is not None
        worker.process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        assert worker.wait_exit(timeout=STOP_TIMEOUT) == 0
        assert time.monotonic() - started < STOP_TIMEOUT
        assert len(of(read(broker, dlq), result.id)) == 1, worker.log[-3000:]
    finally:
        worker.stop()
        delete_queue(client, queue)
        delete_queue(client, dlq)
