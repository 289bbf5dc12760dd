"""The commands' broker timeout bounds every operation, not only connecting: on a real broker
that stops answering once the command has connected, ``dlq`` and ``fleet`` fail in one line.

The command reaches the broker through a proxy that forwards everything until the client
sends bytes naming the test's queue (Redis ``LLEN``, RabbitMQ ``queue.declare``) or the
control exchange (``fleet``'s broadcast); from then on it forwards nothing either way, as a
broker stuck mid-conversation. (Mute listeners that never answer at all are in
tests/unit/test_cli_errors.py.)
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from benchmarks._deadletters import fabricate
from celery import Celery
from kombu.connection import Connection

from tests.support.workers import ROOT, delete_queue

#: The commands' broker timeout in these tests, in seconds.
TIMEOUT = 2
#: Seconds a command may take before the test calls it a hang (startup is slow under load).
HANG = 90


class StallingProxy:
    """Forwards a TCP connection to ``upstream`` until the client sends ``marker``; then
    goes silent (holds both sockets open, forwards nothing)."""

    def __init__(self, upstream: tuple[str, int], marker: bytes) -> None:
        self.upstream, self.marker = upstream, marker
        self.stalled = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream, timeout=5)
            server.settimeout(None)
            self.sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False),
                             daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, watch: bool) -> None:
        with suppress(OSError):
            while data := source.recv(65536):
                if watch and self.marker in data:
                    self.stalled.set()
                if self.stalled.is_set():
                    continue  # swallowed: the broker never sees it, nor answers
                sink.sendall(data)

    def close(self) -> None:
        self.listener.close()
        for sock in self.sockets:
            sock.close()

    def url(self, broker: str) -> str:
        parts = urlsplit(broker)
        credentials, _, _ = parts.netloc.rpartition("@")
        host = f"127.0.0.1:{self.port}"
        return urlunsplit(parts._replace(netloc=f"{credentials}@{host}" if credentials
                                         else host))


@pytest.fixture
def stalling(broker: str) -> Iterator[type[StallingProxy]]:
    made: list[StallingProxy] = []

    def make(marker: bytes) -> StallingProxy:
        parts = urlsplit(broker)
        proxy = StallingProxy((parts.hostname or "127.0.0.1", parts.port or 0), marker)
        made.append(proxy)
        return proxy

    yield make  # type: ignore[misc]
    for proxy in made:
        proxy.close()


def command(*args: str, cwd: Path = ROOT) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "celery_policies", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=HANG, check=False)
    return done, time.monotonic() - started


def assert_one_line(done: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    [line] = [line for line in done.stderr.splitlines() if line.startswith("Error")]
    for needle in needles:
        assert needle in line, line


@pytest.fixture
def dead_letters(broker: str, client: Celery) -> Iterator[str]:
    name = f"dlq.{uuid.uuid4().hex[:12]}"
    with Connection(broker) as connection:
        fabricate(connection, name, 3, origin="work", args_of=lambda i: [i])
    yield name
    delete_queue(client, name)


@pytest.mark.parametrize("args", [["list"], ["show", "0f0f"], ["purge", "--yes"],
                                  ["replay", "--yes"]], ids=lambda a: a[0])
def test_a_broker_that_stops_answering_after_connecting_ends_a_dlq_command(
        broker: str, dead_letters: str, stalling: type[StallingProxy],
        args: list[str]) -> None:
    proxy = stalling(dead_letters.encode())
    done, took = command("dlq", *args, "--broker", proxy.url(broker), "--queue", dead_letters,
                         "--broker-timeout", str(TIMEOUT))
    assert proxy.stalled.is_set(), "the command never named the queue"
    assert_one_line(done, "cannot reach the broker", f"127.0.0.1:{proxy.port}")
    assert took < HANG


def test_a_broker_that_stops_answering_after_connecting_ends_fleet(
        broker: str, stalling: type[StallingProxy], tmp_path: Path) -> None:
    exchange = f"control.{uuid.uuid4().hex[:12]}"
    proxy = stalling(exchange.encode())
    module = f"app_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(
        "from celery import Celery\n"
        f"app = Celery({module!r}, broker={proxy.url(broker)!r}, set_as_current=False)\n"
        f"app.conf.control_exchange = {exchange!r}\n")
    done, took = command("fleet", "--app", module, "--broker-timeout", str(TIMEOUT),
                         "--timeout", "1", cwd=tmp_path)
    assert proxy.stalled.is_set(), "fleet never broadcast"
    assert_one_line(done, "cannot reach the broker")
    assert took < HANG
