"""Every way a worker starts applies the policy file: with no line of code (the plugin's
``celery.commands`` entry point), from Django settings, and in a worker a test starts in its
own process. ``install(app)`` itself: test_startup.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from celery import Celery
from kombu import Exchange, Queue

from tests.support.proxy import Proxy
from tests.support.recording import RESULT_BACKEND
from tests.support.workers import ROOT, Workers, attempts, queue_size, wait_for

from .test_broker_outage import through

#: Retries for the test apps' ``*.flaky`` tasks, which have no retry options in code.
RETRIES = """\
version: 1
policies:
  - match: "{pattern}"
    autoretry_for: [tests.support.recording.Flaky]
    max_retries: 3
    retry_backoff: 0.1s
    retry_jitter: none
"""


def policies(tmp_path: Path, pattern: str) -> Path:
    path = tmp_path / "retries.yaml"
    path.write_text(RETRIES.format(pattern=pattern))
    return path


@pytest.mark.parametrize("how", ["option", "environment", "neither"])
def test_an_app_that_never_imports_the_plugin_gets_the_file_its_worker_is_given(
        how: str, client: Celery, workers: Workers, tmp_path: Path, counters: Any,
        key: str) -> None:
    path = policies(tmp_path, "plain.*")
    if how == "option":
        worker = workers(path, app="tests.support.plainproj")
    elif how == "environment":
        worker = workers(None, app="tests.support.plainproj",
                         env={"CELERY_POLICIES_FILE": str(path)})
    else:
        worker = workers(None, app="tests.support.plainproj")

    result = client.send_task("plain.flaky", (key, 2), queue=workers.queue)
    result.get(timeout=30, propagate=False)
    if how == "neither":
        assert result.state == "FAILURE"
        assert len(attempts(counters, key)) == 1
        assert "celery-policies" not in worker.log  # hands off: nothing was asked
    else:
        assert result.result == "ok"
        assert len(attempts(counters, key)) == 3  # two retries, as the file says
        assert f"celery-policies: applied {path} (1 policy)" in worker.log


def test_a_django_project_names_its_file_in_settings(
        client: Celery, workers: Workers, tmp_path: Path, counters: Any, key: str) -> None:
    path = policies(tmp_path, "djshop.*")
    worker = workers(None, app="tests.support.djproj",
                     env={"TEST_DJANGO_POLICIES": str(path)})
    result = client.send_task("djshop.flaky", (key, 2), queue=workers.queue)
    assert result.get(timeout=30) == "ok"
    assert len(attempts(counters, key)) == 3
    assert f"celery-policies: applied {path} (1 policy) to 1 of 1 tasks" in worker.log


EMBEDDED_TEST = '''
"""What a user's own test suite does: pytest's celery_worker fixture, with the plugin."""
import pytest
import celery_policies
from tests.support.recording import flaky

POLICIES = {policies!r}


@pytest.fixture(scope="session")
def celery_config():
    return {{"broker_url": {broker!r}, "result_backend": {backend!r},
             "task_default_queue": {queue!r}}}


@pytest.fixture(scope="session")
def celery_enable_logging():
    return True


@pytest.fixture(scope="session")
def celery_worker_parameters():
    return {{"loglevel": "INFO"}}  # the test worker's default, ERROR, hides INFO and WARNING


@pytest.fixture
def celery_app(celery_app):
    @celery_app.task(bind=True, name="embedded.flaky")
    def task(self, key, fail_times):
        return flaky(self, key, fail_times)

    celery_policies.install(celery_app, POLICIES)
    return celery_app


def test_runs(celery_app, celery_worker):
    result = celery_app.tasks["embedded.flaky"].delay({key!r}, 2)
    assert result.get(timeout=30) == "ok"
'''


def run_embedded(tmp_path: Path, broker: str, queue: str, key: str, policies: str
                 ) -> subprocess.CompletedProcess[str]:
    test = tmp_path / "test_embedded_user.py"
    test.write_text(textwrap.dedent(EMBEDDED_TEST.format(
        policies=policies, broker=broker, backend=RESULT_BACKEND, queue=queue, key=key)))
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "celery.contrib.pytest", "-p",
         "no:cacheprovider", "-o", "log_cli=true", "-o", "log_cli_level=INFO",
         "--rootdir", str(tmp_path), str(test)],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
        text=True, timeout=120, check=False)


def test_a_worker_embedded_in_a_test_applies_the_file_and_says_so(
        broker: str, queue: str, tmp_path: Path, counters: Any, key: str) -> None:
    """celery.contrib.pytest's celery_worker never sends celeryd_after_setup."""
    path = policies(tmp_path, "embedded.*")
    path.write_text(path.read_text() + "    time_limit: 30s\n")
    done = run_embedded(tmp_path, broker, queue, key, str(path))
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert len(attempts(counters, key)) == 3
    assert f"celery-policies: applied {path} (1 policy)" in output
    # the fixture's worker uses the solo pool, which enforces no time limit
    assert f"celery-policies: {path}:8:5: CP103 warning: the solo pool" in output


def test_an_invalid_file_fails_the_test_run_with_its_errors_instead_of_hanging_it(
        broker: str, queue: str, tmp_path: Path, key: str) -> None:
    path = tmp_path / "invalid.yaml"
    path.write_text("version: 1\npolicies:\n  - match: embedded.*\n    max_retries: lots\n")
    done = run_embedded(tmp_path, broker, queue, key, str(path))
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"{path}:4:18: policies[0].max_retries: " in done.stdout
    assert "WorkerRefused" in done.stdout


BEAT_POLICIES = """\
version: 1
policies:
  - match: proj.noop
    publish_retry_policy:
      max_retries: 3
      interval_start: 1s
      interval_step: 1s
      interval_max: 1s
"""


def waiting(client: Celery, queue: str) -> int:
    """Messages waiting in ``queue``; 0 while Redis has no list for it yet."""
    try:
        return queue_size(client, queue)
    except client.connection_for_write().channel_errors:
        return 0


def log_time(line: str) -> float:
    """The time of a Celery log line ``[2026-12-06 20:43:35,109: ...``, in seconds."""
    stamp = datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f")
    return stamp.timestamp()


@pytest.mark.parametrize("policy", ["file", "none"])
def test_beat_publishes_with_the_files_retry_policy_and_nothing_of_the_worker(
        policy: str, broker: str, client: Celery, queue: str, tmp_path: Path) -> None:
    """celery beat with an app that installs the plugin: when the broker goes away while
    beat sends, it retries as publish_retry_policy says (3 waits of 1 s) before giving up,
    not as Celery's default (0.4 s in all); it applies nothing of the worker."""
    path = tmp_path / "beat.yaml"
    path.write_text(BEAT_POLICIES)
    parts = urlsplit(broker)
    proxy = Proxy(parts.hostname or "127.0.0.1",
                  parts.port or (6379 if parts.scheme == "redis" else 5672)).start()
    with client.connection_for_write() as conn:  # beat declares nothing (auto_declare off)
        Queue(queue, Exchange(queue), routing_key=queue)(conn.default_channel).declare()
    log = tmp_path / "beat.log"
    env = {**os.environ, "TEST_BROKER_URL": through(proxy, broker),
           "TEST_BEAT_TASK": "proj.noop", "TEST_DEFAULT_QUEUE": queue}
    env.pop("CELERY_POLICIES_FILE", None)
    if policy == "file":
        env["CELERY_POLICIES_FILE"] = str(path)
    with log.open("wb") as out:
        beat = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tests.support.proj", "beat", "-l", "INFO",
             "-s", str(tmp_path / "schedule"), "--max-interval", "1"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        assert wait_for(lambda: beat.poll() is not None or waiting(client, queue) >= 2,
                        timeout=30), log.read_text()
        assert beat.poll() is None, log.read_text()
        proxy.stop()
        assert wait_for(lambda: "Message Error" in log.read_text(), timeout=30), (
            log.read_text())
    finally:
        os.killpg(beat.pid, signal.SIGTERM)
        beat.wait(15)
        proxy.stop()
    lines = log.read_text().splitlines()
    failed = next(i for i, line in enumerate(lines) if "Message Error" in line)
    sent = next(line for line in reversed(lines[:failed]) if "Sending due task" in line)
    waited = log_time(lines[failed]) - log_time(sent)
    if policy == "file":
        assert waited >= 2.5, (waited, lines)
    else:
        assert waited < 2.0, (waited, lines)
    assert "celery-policies" not in log.read_text()
