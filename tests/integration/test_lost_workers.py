"""Killed worker processes: with the policy nothing is lost, and nothing loops forever."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from kombu.transport.redis import Channel as RedisChannel

from celery_policies.compat import REDIS_SWEEP_OPTIONS
from tests.support.workers import Worker, Workers, attempts, wait_for

from .conftest import RUNTIME_POLICIES
from .test_retries import RESULT_TIMEOUT

#: Whether kombu's Redis sweep of unacknowledged messages takes options (kombu 5.7): the
#: test app sets it to every second (tests/support/proj.py).
SWEEP_OPTIONS = hasattr(RedisChannel, REDIS_SWEEP_OPTIONS[0])
TASKS = 200
#: Seconds each task works: with 2 processes, the 200 tasks take about 5 s.
TASK_SECONDS = 0.05
#: Redis hands unacknowledged messages of a dead worker back after this many seconds.
VISIBILITY_TIMEOUT = "3"


def progress(counters: Any, key: str) -> int:
    return int(counters.scard(key))


def settle(counters: Any, key: str, quiet: float = 10.0, timeout: float = 90.0) -> int:
    """Wait until all tasks are in, or nothing has come in for ``quiet`` seconds."""
    deadline = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        done = progress(counters, key)
        if done >= TASKS:
            return done
        if done != last:
            last, since = done, time.monotonic()
        elif time.monotonic() - since > quiet:
            return done
        time.sleep(0.2)
    return progress(counters, key)


@pytest.mark.parametrize("policy", ["acks_late+reject_on_worker_lost", "none"])
def test_killing_workers_mid_run_loses_tasks_only_without_the_policy(
        policy: str, client: Celery, workers: Workers, counters: Any, key: str,
        tmp_path: Path) -> None:
    if policy == "none":
        policies = tmp_path / "none.yaml"
        policies.write_text("version: 1\n")
    else:
        policies = RUNTIME_POLICIES
    for item in range(TASKS):
        client.send_task("proj.lost.collect", (key, item, TASK_SECONDS), queue=workers.queue)
    env = {"TEST_VISIBILITY_TIMEOUT": VISIBILITY_TIMEOUT}

    first = workers(policies, env=env)
    assert wait_for(lambda: progress(counters, key) >= 30, timeout=30)
    for pid in first.pool_pids():  # the pool processes die mid-task (OOM-killer style)
        os.kill(pid, signal.SIGKILL)
    before = progress(counters, key)
    assert wait_for(lambda: progress(counters, key) >= before + 30, timeout=30)
    first.kill()  # then the whole worker, main process included
    killed_at = progress(counters, key)
    assert killed_at < TASKS, "the kill came too late to prove anything"

    if not SWEEP_OPTIONS and client.conf.broker_url.startswith("redis"):
        # kombu < 5.7 sweeps unacknowledged Redis messages back every ~100 s, fixed, and
        # once when a worker starts polling (restore_visible in on_poll_init): start the
        # next worker once the killed one's messages are past the visibility timeout.
        time.sleep(float(VISIBILITY_TIMEOUT) + 1)
    workers(policies, env=env)
    done = settle(counters, key)
    if policy == "none":
        assert done < TASKS, "tasks running when the processes died should have been lost"
    elif client.conf.broker_url.startswith("redis"):
        # kombu's Redis transport takes a message off the queue (BRPOP) before it records it
        # as unacknowledged (kombu/transport/redis.py QoS.append); the one message a killed
        # main process's BRPOP had taken in that window is gone with it.
        assert done >= TASKS - 1
    else:
        assert done == TASKS
        assert counters.smembers(key) == {str(i).encode() for i in range(TASKS)}


def test_a_task_that_kills_its_worker_every_time_stops_after_max_redeliveries(
        client: Celery, shared: Worker, counters: Any, key: str) -> None:
    result = client.send_task("proj.lost.suicide", (key,), queue=shared.queue)
    error = result.get(timeout=RESULT_TIMEOUT, propagate=False)
    assert result.state == "FAILURE"
    assert type(error).__name__ == "RedeliveriesExhausted"
    assert "max_redeliveries reached" in str(error)
    assert len(attempts(counters, key)) == 3  # the first run and max_redeliveries 2
    log = shared.log
    assert f"lost running proj.lost.suicide[{result.id}]" in log
    assert "redelivered, 1 of max_redeliveries 2" in log
    assert "redelivered, 2 of max_redeliveries 2" in log
    time.sleep(1)
    assert len(attempts(counters, key)) == 3  # and it never runs again
