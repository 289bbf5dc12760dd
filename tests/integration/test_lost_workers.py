"""Killed worker processes: with the policy nothing is lost (on Redis, at most the one
message a killed main process was fetching), and nothing loops forever."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import redis
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
    """Wait until all tasks are in, or nothing has come in for ``quiet`` seconds (RabbitMQ
    redelivers a dead worker's messages as soon as its connection closes)."""
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


def waiting_on_redis(broker: Any, queue: str, prefix: str) -> tuple[set[str], set[str]]:
    """The ids of the test's tasks in its Redis queue, and in kombu's table of
    unacknowledged messages (each value ``[message, exchange, routing key]``,
    kombu/transport/redis.py ``QoS.append``)."""
    queued = {json.loads(raw)["headers"]["id"] for name in broker.scan_iter(match=f"{queue}*")
              for raw in broker.lrange(name, 0, -1)}
    unacked = {json.loads(raw)[0]["headers"]["id"]
               for raw in broker.hvals(RedisChannel.unacked_key)}
    return queued, {task_id for task_id in unacked if task_id.startswith(prefix)}


def drain_redis(broker: Any, queue: str, prefix: str, timeout: float = 90.0) -> bool:
    """Wait until none of the test's messages is left in the queue or unacknowledged: every
    one has run and been acknowledged (restores included), or was lost."""
    return wait_for(lambda: not any(waiting_on_redis(broker, queue, prefix)), timeout,
                    interval=0.2)


@pytest.mark.parametrize("policy", ["acks_late+reject_on_worker_lost", "none"])
def test_killing_workers_mid_run_loses_tasks_only_without_the_policy(
        policy: str, client: Celery, workers: Workers, counters: Any, key: str,
        tmp_path: Path) -> None:
    """With the policy, every task runs despite killed pool processes and a killed worker;
    on Redis but the one a killed main process had taken off the queue and not yet recorded
    as unacknowledged, if it was taking one. Without the policy, tasks are lost."""
    if policy == "none":
        policies = tmp_path / "none.yaml"
        policies.write_text("version: 1\n")
    else:
        policies = RUNTIME_POLICIES
    redis_broker = client.conf.broker_url.startswith("redis")
    broker = redis.Redis.from_url(client.conf.broker_url) if redis_broker else None
    for item in range(TASKS):
        client.send_task("proj.lost.collect", (key, item, TASK_SECONDS), queue=workers.queue,
                         task_id=f"{key}-{item}")
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
    everything = {f"{key}-{item}" for item in range(TASKS)}

    in_flight: set[str] = set()
    if redis_broker:
        # Nothing runs now: each task is done, waiting in the queue, or unacknowledged, but
        # the one the dead main process had taken off the queue and not yet recorded (let
        # Redis first execute whatever the worker had sent before it died).
        time.sleep(0.5)
        done = {f"{key}-{item.decode()}" for item in counters.smembers(key)}
        queued, unacked = waiting_on_redis(broker, workers.queue, f"{key}-")
        in_flight = everything - done - queued - unacked
    if redis_broker and not SWEEP_OPTIONS:
        # kombu < 5.7 sweeps unacknowledged Redis messages back every ~100 s, fixed, and
        # once when a worker starts polling (restore_visible in on_poll_init): start the
        # next worker once the killed one's messages are past the visibility timeout.
        time.sleep(float(VISIBILITY_TIMEOUT) + 1)
    workers(policies, env=env)
    if redis_broker:
        # Redis restores the dead worker's messages only at a sweep past visibility_timeout
        # (tests/support/proj.py: every second), so wait for the table to empty, not for
        # a quiet spell.
        assert drain_redis(broker, workers.queue, f"{key}-"), "messages were never restored"
    else:
        settle(counters, key)
    done = {f"{key}-{item.decode()}" for item in counters.smembers(key)}
    if policy == "none":
        assert len(done) < TASKS, "tasks running when the processes died should have been lost"
    elif redis_broker:
        # kombu's Redis transport takes a message off the queue before it records it as
        # unacknowledged: _brpop_read() hands the BRPOP reply to _deliver(), whose callback
        # (virtual Channel.basic_consume) calls QoS.append, a ZADD + HSET pipeline
        # (kombu/transport/redis.py, the same in kombu 5.3 and 5.7). A main process killed
        # between the two loses that message. Only one BRPOP is outstanding per channel
        # (MultiChannelPoller._register_BRPOP sends one only when the last was answered),
        # and a worker consumes its task queues on one channel: at most one message.
        assert len(in_flight) <= 1, f"more than one message in flight: {in_flight}"
        assert done == everything - in_flight
    else:
        assert done == everything


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
