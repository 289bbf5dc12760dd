"""Commands that talk to a broker fail in one line, in bounded time, whatever the broker.

Each command runs as a real ``celery-policies`` process (a hang would hang the test, so each
has a hard timeout): bad URLs, an app whose broker URL is invalid, options out of range, and
"mute" brokers, a listener on 127.0.0.1 that accepts connections and never answers (neither
Redis nor AMQP).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from celery_policies.connections import BROKER_TIMEOUT_ENV, DEFAULT_BROKER_TIMEOUT
from tests.unit.test_dlq_cli import Broker, broker  # noqa: F401 - the fixture

#: Seconds each command may take before the test calls it a hang.
HANG = 60.0


@pytest.fixture
def mute() -> Iterator[int]:
    """A port on 127.0.0.1 that accepts connections and never sends a byte."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(5)
    for connection in held:
        connection.close()
    server.close()


def run(*args: str, cwd: Path | None = None,
        env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "celery_policies", *args],
                            check=False, capture_output=True, text=True, timeout=HANG,
                            cwd=cwd,
                            env={**os.environ, **(env or {})})
    return result, time.monotonic() - started


def one_line_error(result: subprocess.CompletedProcess[str], status: int, *needles: str) -> str:
    assert result.returncode == status, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0]
    return lines[0]


def test_an_unknown_transport_is_one_line_naming_it() -> None:
    result, _ = run("dlq", "list", "--broker", "foo://x")
    one_line_error(result, 1, "invalid broker URL foo://x", "No such transport: foo")


def test_a_port_out_of_range_is_one_line_naming_the_url() -> None:
    result, _ = run("dlq", "list", "--broker", "redis://127.0.0.1:99999")
    one_line_error(result, 1, "invalid broker URL redis://127.0.0.1:99999", "Port out of range")


def test_a_password_in_a_bad_url_is_not_printed() -> None:
    result, _ = run("dlq", "list", "--broker", "redis://user:secret@127.0.0.1:99999")
    assert "secret" not in one_line_error(result, 1, "user:**@127.0.0.1:99999")


def test_since_further_back_than_any_date_is_a_bad_parameter(broker: Broker) -> None:  # noqa: F811
    broker.fabricate(1)
    result, _ = run("dlq", "list", "--app", "dlq_test_app", "--since", "99999999999d",
                    cwd=broker.queues.parent)
    one_line_error(result, 2, "'--since'", "99999999999d")


def write_app(folder: Path, broker_url: str) -> str:
    name = f"app_{uuid.uuid4().hex[:8]}"
    (folder / f"{name}.py").write_text(textwrap.dedent(f"""
        from celery import Celery
        app = Celery({name!r}, broker={broker_url!r}, set_as_current=False)
    """))
    return name


@pytest.mark.parametrize("command", [["dlq", "list"], ["fleet"]])
def test_an_app_with_an_invalid_broker_url_is_one_line(tmp_path: Path,
                                                       command: list[str]) -> None:
    app = write_app(tmp_path, "foo://x")
    result, _ = run(*command, "--app", app, cwd=tmp_path)
    one_line_error(result, 1, "invalid broker URL foo://x")


MUTE_URLS = {"redis": "redis://127.0.0.1:{port}/0", "amqp": "amqp://guest:guest@127.0.0.1:{port}//"}
COMMANDS = [["list"], ["show", "0f0f"], ["replay", "--yes"], ["purge", "--yes"]]


@pytest.mark.parametrize("kind", sorted(MUTE_URLS))
@pytest.mark.parametrize("command", COMMANDS, ids=[c[0] for c in COMMANDS])
def test_every_dlq_command_gives_up_on_a_mute_broker(mute: int, kind: str,
                                                     command: list[str]) -> None:
    url = MUTE_URLS[kind].format(port=mute)
    result, took = run("dlq", *command, "--broker", url, "--broker-timeout", "1")
    one_line_error(result, 1, "cannot reach the broker", f"127.0.0.1:{mute}", "within 1s")
    assert took < 15


@pytest.mark.parametrize("kind", sorted(MUTE_URLS))
def test_fleet_gives_up_on_a_mute_broker(mute: int, kind: str, tmp_path: Path) -> None:
    app = write_app(tmp_path, MUTE_URLS[kind].format(port=mute))
    result, took = run("fleet", "--app", app, "--broker-timeout", "1", cwd=tmp_path)
    one_line_error(result, 1, "cannot reach the broker", f"127.0.0.1:{mute}")
    assert took < 15


def test_the_broker_timeout_comes_from_the_environment_too(mute: int) -> None:
    url = MUTE_URLS["redis"].format(port=mute)
    result, took = run("dlq", "list", "--broker", url, env={BROKER_TIMEOUT_ENV: "0.5"})
    one_line_error(result, 1, "within 0.5s")
    assert took < 15


def test_a_broker_timeout_that_is_not_a_positive_number_is_a_bad_parameter() -> None:
    result, _ = run("dlq", "list", "--broker", "redis://127.0.0.1:1", "--broker-timeout", "0")
    one_line_error(result, 2, "'--broker-timeout'")


def test_the_help_states_the_default_broker_timeout_and_its_variable() -> None:
    result, _ = run("dlq", "list", "--help")
    text = " ".join(result.stdout.split())
    assert f"default: {DEFAULT_BROKER_TIMEOUT:g}" in text or \
        f"default: {DEFAULT_BROKER_TIMEOUT}" in text
    assert BROKER_TIMEOUT_ENV in text


def test_check_of_an_app_with_an_invalid_broker_url_lints_without_the_broker_rules(
        tmp_path: Path) -> None:
    """``check`` does not connect; it reads the broker's kind, which such a URL has none of."""
    app = write_app(tmp_path, "foo://x")
    (tmp_path / "policies.yaml").write_text("version: 1\npolicies:\n  - match: '*'\n"
                                            "    max_retries: 2\n")
    result, _ = run("check", "--app", app, "policies.yaml", cwd=tmp_path)
    assert "Traceback" not in result.stderr
    assert result.returncode == 0, result.stderr
