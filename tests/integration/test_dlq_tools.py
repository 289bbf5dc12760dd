"""The ``dlq`` commands on real brokers: reading takes nothing out, replay loses nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from benchmarks._deadletters import fabricate
from celery import Celery
from kombu.connection import Connection
from kombu.entity import Queue

from tests.support.deadletters import dlq, read
from tests.support.workers import (
    ROOT,
    Worker,
    Workers,
    attempts,
    delete_queue,
    queue_size,
    wait_for,
)

from .test_dead_letters import POLICIES


@pytest.fixture
def dead_letter_queue(client: Celery) -> Iterator[str]:
    name = f"dlq.{uuid.uuid4().hex[:12]}"
    yield name
    delete_queue(client, name)


def listing(broker: str, queue: str) -> list[dict[str, Any]]:
    done = dlq("list", "--broker", broker, "--queue", queue, "--format", "json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def test_listing_twice_gives_the_same_result_and_takes_nothing_out(
        broker: str, client: Celery, dead_letter_queue: str) -> None:
    with Connection(broker) as connection:
        ids = fabricate(connection, dead_letter_queue, 50, origin="work",
                        args_of=lambda i: [i])
    first = listing(broker, dead_letter_queue)
    second = listing(broker, dead_letter_queue)
    assert first == second
    assert [letter["id"] for letter in first] == ids
    assert [letter["args"] for letter in first] == [[i] for i in range(50)]
    assert queue_size(client, dead_letter_queue) == 50


def reading(counters: Any, broker: str, queue: str, total: int) -> bool:
    """Whether a ``dlq`` process is in the middle of reading ``queue``."""
    if broker.startswith("redis"):
        return any(client.get("cmd") == "lrange" for client in counters.client_list())
    with Connection(broker) as connection:
        ready = Queue(queue)(connection.default_channel).queue_declare(passive=True)
    return int(ready.message_count) < total  # the rest is held, unacknowledged


def test_killing_list_half_way_leaves_every_dead_letter_in_the_queue(
        broker: str, client: Celery, counters: Any, dead_letter_queue: str) -> None:
    total = 5000
    with Connection(broker) as connection:
        ids = fabricate(connection, dead_letter_queue, total, origin="work")
    process = subprocess.Popen(
        [sys.executable, "-m", "celery_policies", "dlq", "list", "--broker", broker,
         "--queue", dead_letter_queue, "--format", "json"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: reading(counters, broker, dead_letter_queue, total),
                        timeout=30, interval=0.01), "the listing never started reading"
        assert process.poll() is None, "the listing finished before it could be killed"
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(10)
    assert wait_for(lambda: queue_size(client, dead_letter_queue) == total, timeout=30)
    assert [letter.id for letter in read(broker, dead_letter_queue)] == ids


@pytest.fixture
def worker(workers: Workers, dead_letter_queue: str) -> Worker:
    return workers(POLICIES, env={"TEST_DLQ": dead_letter_queue,
                                  "TEST_DEFAULT_QUEUE": workers.queue})


def test_replay_after_fixing_the_cause_runs_every_task_once_more_and_empties_the_queue(
        broker: str, client: Celery, counters: Any, key: str, worker: Worker,
        dead_letter_queue: str) -> None:
    results = [client.send_task("proj.dlq.fixable", [key], queue=worker.queue)
               for _ in range(20)]
    assert wait_for(lambda: len(read(broker, dead_letter_queue)) == 20, timeout=60)

    dry = dlq("replay", "--broker", broker, "--queue", dead_letter_queue, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"20 dead letters to replay from {dead_letter_queue}: 20 to {worker.queue}" in (
        dry.stdout)
    assert "Dry run: nothing was published or removed." in dry.stdout
    time.sleep(1)
    assert len(read(broker, dead_letter_queue)) == 20
    assert len(attempts(counters, key)) == 20

    counters.set(f"{key}:fixed", 1)
    done = dlq("replay", "--broker", broker, "--queue", dead_letter_queue, "--yes")
    assert done.returncode == 0, done.stderr
    assert [result.get(timeout=30) for result in results] == ["ok"] * 20  # same task ids
    events = [event for *_, event in attempts(counters, key)]
    assert (events.count("failed"), events.count("ok")) == (20, 20)
    assert read(broker, dead_letter_queue) == []


def test_replaying_ten_thousand_shows_progress_and_keeps_the_count_exact(
        broker: str, client: Celery, dead_letter_queue: str) -> None:
    total, target = 10_000, f"replayed.{uuid.uuid4().hex[:12]}"
    try:
        with Connection(broker) as connection:
            Queue(target, durable=True)(connection.default_channel).declare()
            ids = fabricate(connection, dead_letter_queue, total, origin=target)
        done = dlq("replay", "--broker", broker, "--queue", dead_letter_queue, "--yes",
                   timeout=300)
        assert done.returncode == 0, done.stderr
        assert [line for line in done.stderr.splitlines() if line.startswith("replayed ")] == [
            f"replayed {n}/{total}" for n in range(1000, total + 1, 1000)]
        assert f"Replayed {total} of {total} dead letters ({total} to {target})" in done.stdout
        assert read(broker, dead_letter_queue) == []
        assert queue_size(client, target) == total
        assert sorted(letter.id for letter in read(broker, target)) == sorted(ids)
    finally:
        delete_queue(client, target)
