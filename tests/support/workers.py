"""Real ``celery worker`` subprocesses for integration tests, and the brokers they use."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from celery import Celery

from tests.support.recording import REDIS_DB, REDIS_URL

ROOT = Path(__file__).resolve().parents[2]
AMQP_URL = os.environ.get("CELERY_POLICIES_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672//")
BROKERS = {"redis": f"{REDIS_URL}/{REDIS_DB}", "rabbitmq": AMQP_URL}
#: How long a worker may take to say "ready." before the test fails.
START_TIMEOUT = 60.0


def reachable(url: str) -> bool:
    parts = urlsplit(url)
    default = 6379 if parts.scheme.startswith("redis") else 5672
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or default),
                                      timeout=2):
            return True
    except OSError:
        return False


def require(url: str, what: str) -> None:
    """Skip with one line when ``url`` is down; under CI=true, fail instead."""
    if reachable(url):
        return
    message = f"{what} is not reachable at {url}"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} (CI=true: broker tests must run)", pytrace=False)
    pytest.skip(message)


@dataclass
class Worker:
    """One ``celery -A APP worker`` process (``tests.support.proj`` unless told otherwise),
    in its own process group."""

    broker_url: str
    queue: str
    log_path: Path
    policies: Path | None = None
    pool: str = "prefork"
    concurrency: int = 2
    extra: Sequence[str] = ()
    env: dict[str, str] = field(default_factory=dict)
    app: str = "tests.support.proj"
    name: str = field(default_factory=lambda: f"w{uuid.uuid4().hex[:8]}")
    process: subprocess.Popen[bytes] | None = None

    @property
    def hostname(self) -> str:
        return f"{self.name}@{socket.gethostname()}"

    def start(self, *, wait: bool = True) -> Worker:
        command = [sys.executable, "-m", "celery", "-A", self.app, "worker",
                   "-Q", self.queue, "-P", self.pool, "-c", str(self.concurrency),
                   "-n", self.hostname, "-l", "INFO", "--without-gossip", "--without-mingle",
                   "--without-heartbeat", *self.extra]
        if self.policies is not None:
            command += ["--policies", str(self.policies)]
        inherited = {k: v for k, v in os.environ.items() if k != "CELERY_POLICIES_FILE"}
        env = {**inherited, "TEST_BROKER_URL": self.broker_url, **self.env}
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if " ready." in self.log:
                return
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"worker exited with {self.process.returncode}:\n{self.log}")
            time.sleep(0.1)
        raise AssertionError(f"worker not ready after {START_TIMEOUT}s:\n{self.log}")

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def pool_pids(self) -> list[int]:
        """The pool's child processes."""
        assert self.process is not None
        path = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return [int(pid) for pid in path.read_text().split()]

    def wait_exit(self, timeout: float = 30.0) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def kill(self) -> None:
        """SIGKILL the whole worker: main process and pool."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        """Cold shutdown (the test is over: running tasks may be cut); SIGKILL if slow."""
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGQUIT)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.kill()


class Workers:
    """Starts workers for one test and stops every one of them afterwards."""

    def __init__(self, broker_url: str, queue: str, tmp_path: Path) -> None:
        self.broker_url, self.queue, self.tmp_path = broker_url, queue, tmp_path
        self.started: list[Worker] = []

    def __call__(self, policies: Path | None = None, *, start: bool = True,
                 wait: bool = True, **options: Any) -> Worker:
        log = self.tmp_path / f"worker-{len(self.started)}.log"
        worker = Worker(self.broker_url, self.queue, log, policies, **options)
        self.started.append(worker)
        return worker.start(wait=wait) if start else worker

    def stop_all(self) -> None:
        for worker in self.started:
            worker.stop()


def attempts(counters: Any, key: str) -> list[list[Any]]:
    """What the test app recorded under ``key``: ``[time, pid, node, event]`` per call."""
    return [json.loads(item) for item in counters.lrange(key, 0, -1)]


def gaps(records: list[list[Any]]) -> list[float]:
    """Seconds between consecutive records."""
    return [b[0] - a[0] for a, b in itertools.pairwise(records)]


def queue_size(app: Celery, queue: str) -> int:
    """Messages ready in ``queue``, read without consuming them."""
    with app.connection_for_write() as conn:
        return int(conn.default_channel.queue_declare(queue=queue, passive=True).message_count)


def delete_queue(app: Celery, queue: str) -> None:
    # the queue may never have been declared
    with app.connection_for_write() as conn, contextlib.suppress(Exception):
        conn.default_channel.queue_delete(queue)


def wait_for(predicate: Any, timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def iter_lines(text: str, needle: str) -> Iterator[str]:
    return (line for line in text.splitlines() if needle in line)
