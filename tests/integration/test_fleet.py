"""``celery-policies fleet`` against three real workers on one broker, one of them started with
a file that differs in one value: the command names exactly that worker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support import proj
from tests.support.workers import ROOT, START_TIMEOUT, Worker, delete_queue, wait_for

from .conftest import RUNTIME_POLICIES

#: The value the odd worker's file changes (in the ``fleet`` policy of runtime.yaml).
VALUE = "retry_backoff: 0.3s"
#: Seconds the command waits for answers to a broadcast (it waits them all out: it cannot know
#: how many workers there are). Idle workers answer in milliseconds; this leaves room for a
#: loaded machine.
TIMEOUT = "3"
#: The wait when every worker is named: the command returns as soon as they have answered.
NAMED_TIMEOUT = "30"


@dataclass
class Fleet:
    """Three running workers: ``first`` and ``second`` apply the same policies, written
    differently; ``odd`` applies a file that differs in one value."""

    broker: str
    exchange: str
    majority: Path
    odd_file: Path
    first: Worker
    second: Worker
    odd: Worker

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``celery-policies fleet --app tests.support.proj ARGS``, on this fleet's broker."""
        env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
        env.update(TEST_BROKER_URL=self.broker, TEST_CONTROL_EXCHANGE=self.exchange)
        return subprocess.run([sys.executable, "-m", "celery_policies", "fleet",
                               "--app", "tests.support.proj", *args],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
                              check=False)

    def verdict(self, *args: str) -> tuple[int, dict[str, Any]]:
        """The exit code and the JSON verdict of ``fleet --json ARGS``."""
        done = self.run("--json", "--timeout", TIMEOUT, *args)
        assert done.stdout.startswith("{"), done.stderr
        return done.returncode, json.loads(done.stdout)


def replace(text: str, old: str, new: str) -> str:
    """``text`` with its one ``old`` replaced by ``new``."""
    assert text.count(old) == 1, old
    return text.replace(old, new)


def write_files(folder: Path) -> tuple[Path, Path, Path]:
    """The majority's file, the same policies written differently, and the odd file."""
    text = RUNTIME_POLICIES.read_text()
    majority = folder / "majority.yaml"
    majority.write_text(text)
    # No comments, a duration in other units, the keys of one policy in another order.
    reordered = replace(text, "    retry_jitter: none\n    retry_deadline: 2s\n",
                        "    retry_deadline: 2s\n    retry_jitter: none\n")
    rewritten = folder / "rewritten.yaml"
    rewritten.write_text("".join(
        line for line in replace(reordered, VALUE, "retry_backoff: 300ms").splitlines(True)
        if not line.lstrip().startswith("#")))
    odd = folder / "odd.yaml"
    odd.write_text(replace(text, VALUE, "retry_backoff: 0.4s"))
    return majority, rewritten, odd


@pytest.fixture(scope="module")
def fleet(broker: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    folder = tmp_path_factory.mktemp("fleet")
    majority, rewritten, odd_file = write_files(folder)
    # A control exchange of their own: the broadcast reaches these workers and no other.
    exchange = f"fleet.{uuid.uuid4().hex[:12]}"
    queue = f"fleet.{uuid.uuid4().hex[:12]}"
    workers = [Worker(broker, queue, folder / f"worker-{i}.log", path, pool="solo",
                      env={"TEST_CONTROL_EXCHANGE": exchange})
               for i, path in enumerate((majority, rewritten, odd_file))]
    control = proj.create_app(broker)
    control.conf.control_exchange = exchange
    try:
        for worker in workers:
            worker.start(wait=False)
        for worker in workers:
            worker.wait_ready()
        names = [worker.hostname for worker in workers]
        # "ready." is logged before the worker listens to broadcasts (on Redis it subscribes
        # from its event loop): wait until each one answers a ping.
        assert wait_for(lambda: len(control.control.ping(names, timeout=0.5)) == 3,
                        START_TIMEOUT), "the workers do not answer remote control"
        yield Fleet(broker, exchange, majority, odd_file, *workers)
    finally:
        with ThreadPoolExecutor(len(workers)) as pool:  # each stop waits for its worker
            list(pool.map(Worker.stop, workers))
        delete_queue(control, queue)
        control.close()


def statuses(verdict: dict[str, Any]) -> dict[str, str]:
    return {worker["worker"]: worker["status"] for worker in verdict["workers"]}


def test_without_a_file_the_worker_that_differs_from_the_majority_is_named(
        fleet: Fleet) -> None:
    done = fleet.run("--timeout", TIMEOUT, "--expect", "3")

    assert done.returncode == 1, done.stdout + done.stderr
    rows = {line.split()[1]: line for line in done.stdout.splitlines()
            if "@" in line and line.startswith("│")}
    assert "DRIFT" in rows[fleet.odd.hostname]
    assert " ok " in rows[fleet.first.hostname]
    assert " ok " in rows[fleet.second.hostname]
    summary = done.stderr.strip().splitlines()[-1]
    assert summary.startswith("Error: 1 of 3 workers drift from fingerprint ")
    assert summary.endswith(f"(the majority, 2 of 3 workers): {fleet.odd.hostname}")


def test_with_the_majority_file_the_odd_worker_is_named_and_the_file_matches_the_others(
        fleet: Fleet) -> None:
    code, verdict = fleet.verdict("--file", str(fleet.majority), "--expect", "3")

    assert code == 1, verdict
    assert statuses(verdict) == {fleet.first.hostname: "ok", fleet.second.hostname: "ok",
                                 fleet.odd.hostname: "drift"}
    # What the command computes from the file is, byte for byte, what the workers report.
    prints = {w["worker"]: w["fingerprint"] for w in verdict["workers"]}
    assert verdict["expected"] == {"fingerprint": prints[fleet.first.hostname],
                                   "source": str(fleet.majority)}
    assert prints[fleet.second.hostname] == prints[fleet.first.hostname]
    assert verdict["summary"].endswith(f": {fleet.odd.hostname}")


def test_with_the_odd_file_the_other_two_workers_are_named(fleet: Fleet) -> None:
    code, verdict = fleet.verdict("--file", str(fleet.odd_file), "--expect", "3")

    assert code == 1, verdict
    assert statuses(verdict) == {fleet.first.hostname: "drift", fleet.second.hostname: "drift",
                                 fleet.odd.hostname: "ok"}
    odd = next(w for w in verdict["workers"] if w["worker"] == fleet.odd.hostname)
    assert verdict["expected"]["fingerprint"] == odd["fingerprint"]
    assert odd["file"] == str(fleet.odd_file)


def test_workers_that_agree_pass(fleet: Fleet) -> None:
    workers = f"{fleet.first.hostname},{fleet.second.hostname}"
    done = fleet.run("--file", str(fleet.majority), "--workers", workers,
                     "--timeout", NAMED_TIMEOUT)

    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1].startswith("2 of 2 workers apply fingerprint ")
    assert "DRIFT" not in done.stdout


def test_a_named_worker_that_does_not_answer_fails(fleet: Fleet) -> None:
    code, verdict = fleet.verdict("--workers", f"{fleet.first.hostname},ghost@nowhere")

    assert code == 1, verdict
    assert statuses(verdict) == {fleet.first.hostname: "ok"}
    assert verdict["missing"] == ["ghost@nowhere"]
    assert verdict["summary"] == f"did not answer within {TIMEOUT}s: ghost@nowhere"
