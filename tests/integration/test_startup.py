"""A worker starts with valid policies or not at all."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from celery import Celery

from tests.support.workers import Workers, queue_size

from .conftest import RUNTIME_POLICIES

INVALID = """\
version: 1
policies:
  - match: proj.retry.*
    max_retries: lots
"""


def test_an_invalid_file_stops_the_worker_before_it_consumes_anything(
        client: Celery, workers: Workers, tmp_path: Path) -> None:
    client.send_task("proj.noop", queue=workers.queue)
    assert queue_size(client, workers.queue) == 1
    policies = tmp_path / "policies.yaml"
    policies.write_text(INVALID)

    worker = workers(policies, wait=False)
    assert worker.wait_exit() == 78
    assert f"{policies}:4:18: policies[0].max_retries: " in worker.log
    assert " ready." not in worker.log
    assert queue_size(client, workers.queue) == 1


def test_an_exception_that_cannot_be_imported_stops_the_worker(
        client: Celery, workers: Workers, tmp_path: Path) -> None:
    policies = tmp_path / "policies.yaml"
    policies.write_text(RUNTIME_POLICIES.read_text().replace(
        "dont_autoretry_for: [tests.support.proj.Fatal]",
        "dont_autoretry_for: [tests.support.proj.Fatall]"))
    client.send_task("proj.noop", queue=workers.queue)

    worker = workers(policies, wait=False)
    assert worker.wait_exit() == 78
    line = next(line for line in worker.log.splitlines() if "Fatall" in line)
    assert re.match(rf"{re.escape(str(policies))}:\d+:\d+: policies\[4\]\.dont_autoretry_for"
                    r"\[0\]: ", line)
    assert queue_size(client, workers.queue) == 1


@pytest.mark.parametrize("source", ["option", "environment", "none"])
def test_the_file_comes_from_the_option_or_the_environment_else_no_policies(
        source: str, client: Celery, workers: Workers) -> None:
    if source == "option":
        worker = workers(RUNTIME_POLICIES, pool="solo")
    elif source == "environment":
        worker = workers(None, pool="solo", env={"CELERY_POLICIES_FILE": str(RUNTIME_POLICIES)})
    else:
        worker = workers(None, pool="solo")
    result = client.send_task("proj.retry.limited", ("unused", 0), queue=workers.queue)
    assert result.get(timeout=30) == "ok"
    lines = [line for line in worker.log.splitlines() if "celery-policies:" in line]
    if source == "none":
        assert len(lines) == 1
        assert "no policy file" in lines[0]
    else:
        assert any(f"applied {RUNTIME_POLICIES}" in line for line in lines)
