"""The broker goes away while a task fails for good: nothing is silently dropped.

The worker reaches the broker through a proxy (tests/support/proxy.py) that the test cuts
and restores, rather than stopping the machine's shared Redis or RabbitMQ.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from celery import Celery

from tests.support.deadletters import of, read
from tests.support.proxy import Proxy
from tests.support.workers import Worker, attempts, delete_queue, iter_lines, wait_for

from .test_dead_letters import POLICIES

#: Seconds the failing task works before it fails.
WORK = 2


def through(proxy: Proxy, url: str) -> str:
    """``url`` with its host and port replaced by the proxy's."""
    parts = urlsplit(url)
    credentials, _, _ = parts.netloc.rpartition("@")
    host = f"127.0.0.1:{proxy.port}"
    return urlunsplit(parts._replace(netloc=f"{credentials}@{host}" if credentials else host))


@pytest.fixture
def proxy(broker: str) -> Iterator[Proxy]:
    parts = urlsplit(broker)
    started = Proxy(parts.hostname or "127.0.0.1",
                    parts.port or (6379 if parts.scheme == "redis" else 5672)).start()
    yield started
    started.stop()


@pytest.fixture
def names(client: Celery) -> Iterator[tuple[str, str]]:
    queue, dead = f"outage.{uuid.uuid4().hex[:12]}", f"dlq.{uuid.uuid4().hex[:12]}"
    yield queue, dead
    delete_queue(client, queue)
    delete_queue(client, dead)


def worker_env(queue: str, dead: str, **extra: str) -> dict[str, str]:
    return {"TEST_DLQ": dead, "TEST_DEFAULT_QUEUE": queue, "TEST_VISIBILITY_TIMEOUT": "5",
            **extra}


def critical_lines(worker: Worker, task_id: str) -> list[str]:
    return [line for line in iter_lines(worker.log, "CRITICAL") if task_id in line]


def test_a_task_failing_while_the_broker_is_down_is_dead_lettered_when_it_returns(
        broker: str, client: Celery, counters: Any, key: str, proxy: Proxy,
        names: tuple[str, str], tmp_path: Path) -> None:
    queue, dead = names
    worker = Worker(through(proxy, broker), queue, tmp_path / "worker.log", POLICIES,
                    env=worker_env(queue, dead))
    try:
        worker.start()
        result = client.send_task("proj.dlq.slow_fail", [key, WORK], queue=queue)
        assert wait_for(lambda: attempts(counters, key), timeout=30)
        proxy.stop()  # the broker goes away while the task runs
        time.sleep(WORK + 3)  # the task has failed meanwhile

        proxy.start()  # the broker is back: the worker reconnects and works again
        assert client.send_task("proj.noop", queue=queue).get(timeout=90) == "ok"
        assert wait_for(lambda: of(read(broker, dead), result.id)
                        or critical_lines(worker, result.id), timeout=60), worker.log
    finally:
        worker.stop()


def test_a_dead_letter_that_cannot_be_published_is_logged_in_full_and_not_acknowledged(
        broker: str, client: Celery, counters: Any, key: str, proxy: Proxy,
        names: tuple[str, str], tmp_path: Path) -> None:
    """Only the worker's publishing connection goes through the proxy: the worker goes on
    consuming while its dead letter cannot be stored."""
    queue, dead = names
    env = worker_env(queue, dead, TEST_BROKER_WRITE_URL=through(proxy, broker))
    worker = Worker(broker, queue, tmp_path / "worker.log", POLICIES, env=env)
    try:
        worker.start()
        result = client.send_task("proj.dlq.slow_fail", [key, WORK], queue=queue)
        assert wait_for(lambda: attempts(counters, key), timeout=30)
        proxy.stop()
        assert wait_for(lambda: len(critical_lines(worker, result.id)) >= 2, timeout=30), (
            worker.log)
        [line] = [line for line in critical_lines(worker, result.id)
                  if "could not dead-letter" in line]
        logged = json.loads(line.split("to redo it by hand: ", 1)[1])
        assert logged["target"] == dead
        assert logged["message"]["headers"]["id"] == result.id
        assert logged["message"]["headers"]["celery_policies_failure"]["reason"] == "exception"
        assert json.loads(logged["message"]["body"])[0] == [key, WORK]
        assert any("not acknowledging" in line for line in critical_lines(worker, result.id))
        proxy.start()
    finally:
        worker.stop()
    # The message was never acknowledged: the broker has it back, and the next worker
    # stores its dead letter.
    again = Worker(broker, queue, tmp_path / "again.log", POLICIES, env=worker_env(queue, dead))
    try:
        again.start()
        assert wait_for(lambda: of(read(broker, dead), result.id), timeout=60), again.log
    finally:
        again.stop()
