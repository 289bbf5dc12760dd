"""``explain`` and the running workers agree; several workers behave as one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from celery import VERSION as celery_version
from celery import Celery

from celery_policies import load_policies
from celery_policies.policy import fingerprint
from celery_policies.spec.matching import Matcher
from celery_policies.tools.explain import explain
from tests.support.proj import create_app
from tests.support.workers import ROOT, Worker, Workers, attempts, gaps

from .conftest import RUNTIME_POLICIES
from .test_retries import RESULT_TIMEOUT, assert_within


def celery(broker: str, *args: str) -> str:
    """Run ``celery -A tests.support.proj ARGS`` and return its stdout."""
    done = subprocess.run([sys.executable, "-m", "celery", "-A", "tests.support.proj", *args],
                          cwd=ROOT, env={**os.environ, "TEST_BROKER_URL": broker},
                          capture_output=True, text=True, timeout=60, check=True)
    return done.stdout


#: Celery's `inspect` command accepts commands that apps register from 5.4 on; 5.3 offers
#: only its own (a click.Choice fixed at import, celery/bin/control.py).
CLI_INSPECTS_CUSTOM = celery_version >= (5, 4)


def inspect_policies(broker: str, worker: Worker) -> dict[str, Any]:
    """What ``celery -A proj inspect policies`` prints for ``worker``; on Celery 5.3 the same
    broadcast made through the API, as ``celery-policies fleet`` makes it."""
    if not CLI_INSPECTS_CUSTOM:
        app = create_app(broker, client=True)
        try:
            replies = app.control.broadcast("policies", destination=[worker.hostname],
                                            reply=True, timeout=10)
        finally:
            app.close()
        return next(reply[worker.hostname] for reply in replies if worker.hostname in reply)
    out = celery(broker, "inspect", "policies", "-d", worker.hostname, "-j", "-t", "10")
    answers: dict[str, Any] = json.loads(out)
    return answers[worker.hostname]  # type: ignore[no-any-return]


def explain_json() -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-m", "celery_policies", "explain",
                           str(RUNTIME_POLICIES), "--app", "tests.support.proj",
                           "--format", "json"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def test_explain_and_the_running_worker_agree_on_every_setting_of_every_task(
        broker: str, shared: Worker) -> None:
    worker = inspect_policies(broker, shared)
    explained = explain_json()

    assert worker["file"] == str(RUNTIME_POLICIES)
    assert worker["pool"] == "prefork"
    assert set(worker["tasks"]) == {task["name"] for task in explained["tasks"]}
    for task in explained["tasks"]:
        running = worker["tasks"][task["name"]]
        assert running["matched"] == task["matched"], task["name"]
        for key, entry in task["settings"].items():
            assert running["settings"][key] == entry["value"], (task["name"], key)
    names = [task["name"] for task in explained["tasks"]]
    expected = fingerprint(explain(Matcher(load_policies(RUNTIME_POLICIES)), names))
    assert worker["fingerprint"] == expected


def test_explain_says_the_file_overrides_task_code_and_the_worker_does_so(
        broker: str, shared: Worker) -> None:
    coded = next(t for t in explain_json()["tasks"] if t["name"] == "proj.code.coded")
    settings = coded["settings"]
    assert settings["acks_late"]["value"] is False
    assert settings["acks_late"]["overrides"] == {"value": True, "source": "task code"}
    assert settings["autoretry_for"]["value"] == ["tests.support.proj.Throttled"]
    assert settings["autoretry_for"]["overrides"]["value"] == ["tests.support.proj.Flaky"]
    assert settings["max_retries"]["overrides"]["value"] == 5

    running = inspect_policies(broker, shared)["tasks"]["proj.code.coded"]
    assert running["settings"]["acks_late"] is False
    assert running["settings"]["autoretry_for"] == ["tests.support.proj.Throttled"]
    assert running["settings"]["max_retries"] == 1
    assert running["retry_wrapper"] is True


def test_two_workers_on_one_queue_apply_the_same_policies_identically(
        broker: str, client: Celery, workers: Workers, counters: Any, key: str) -> None:
    pair = [workers(RUNTIME_POLICIES), workers(RUNTIME_POLICIES)]
    prints = {inspect_policies(broker, worker)["fingerprint"] for worker in pair}
    assert len(prints) == 1

    succeeding = [client.send_task("proj.retry.fleet", (f"{key}:ok:{i}", 2), queue=workers.queue)
                  for i in range(20)]
    failing = [client.send_task("proj.retry.fleet", (f"{key}:ko:{i}", 9), queue=workers.queue)
               for i in range(10)]
    assert [r.get(timeout=RESULT_TIMEOUT) for r in succeeding] == ["ok"] * 20
    errors = [r.get(timeout=RESULT_TIMEOUT, propagate=False) for r in failing]
    assert {type(e).__name__ for e in errors} == {"Flaky"}

    nodes_per_task = []
    for name in [f"{key}:ok:{i}" for i in range(20)] + [f"{key}:ko:{i}" for i in range(10)]:
        records = attempts(counters, name)
        assert [r[3] for r in records] == [0, 1, 2], name  # max_retries 2, on any worker
        assert_within(gaps(records), [(0.3, 0.3), (0.6, 0.6)])
        nodes_per_task.append({r[2] for r in records})
    assert set().union(*nodes_per_task) == {worker.hostname for worker in pair}
    assert any(len(nodes) == 2 for nodes in nodes_per_task), "no retry moved between workers"
