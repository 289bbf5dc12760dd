"""``dlq replay`` on real brokers with a malformed dead letter among good ones: the good ones
reach their queue exactly once and leave the dead-letter queue, the bad one stays with its
reason printed, and the command exits 1."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from benchmarks._deadletters import fabricate
from celery import Celery
from kombu.connection import Connection
from kombu.entity import Queue

from celery_policies.deadletters.envelope import Envelope, Publisher, dead_letter, now_iso
from celery_policies.headers import FAILURE_HEADER, REPLAYS_HEADER
from tests.support.deadletters import dlq, read
from tests.support.workers import delete_queue

_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


@pytest.fixture
def queues(client: Celery) -> Iterator[tuple[str, str]]:
    """A dead-letter queue and the work queue its letters came from (declared, as a
    worker would)."""
    dead, work = f"dlq.{uuid.uuid4().hex[:12]}", f"work.{uuid.uuid4().hex[:12]}"
    with client.connection_for_write() as connection:
        Queue(work, durable=True)(connection.default_channel).declare()
    yield dead, work
    delete_queue(client, dead)
    delete_queue(client, work)


def malformed(connection: Connection, queue: str, origin: str, **headers: Any) -> str:
    """Publish a dead letter of ``proj.noop`` from ``origin`` whose headers are changed by
    ``headers``; its task id."""
    task_id = str(uuid.uuid4())
    envelope = dead_letter(
        Envelope(json.dumps([[], {}, _EMBED]).encode(), "application/json", "utf-8",
                 {"lang": "py", "task": "proj.noop", "id": task_id, "retries": 0},
                 {"correlation_id": task_id}),
        {"reason": "exception", "exception": "ConnectionError", "failed_at": now_iso(),
         "queue": origin})
    envelope = Envelope(envelope.body, envelope.content_type, envelope.content_encoding,
                        {**envelope.headers, **headers}, envelope.properties)
    Publisher(connection).publish(envelope, queue)
    return task_id


def test_replay_skips_malformed_letters_and_replays_the_others_exactly_once(
        broker: str, queues: tuple[str, str]) -> None:
    dead, work = queues
    with Connection(broker) as connection:
        before = fabricate(connection, dead, 3, origin=work)
        lots = malformed(connection, dead, work, **{REPLAYS_HEADER: "lots"})
        between = fabricate(connection, dead, 2, origin=work)
        not_a_record = malformed(connection, dead, work, **{FAILURE_HEADER: "oops"})
        after = fabricate(connection, dead, 3, origin=work)
    good = before + between + after

    done = dlq("replay", "--broker", broker, "--queue", dead, "--yes")
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert f"Replayed 8 of 10 dead letters (8 to {work}); removed them from {dead}." in (
        done.stdout)
    assert (f"Not replayed: proj.noop[{lots}]: header {REPLAYS_HEADER!r} is str 'lots', not "
            "a whole number >= 0") in done.stderr.splitlines()
    assert (f"Not replayed: proj.noop[{not_a_record}]: header {FAILURE_HEADER!r} is str "
            "'oops', not a record") in done.stderr.splitlines()
    assert sorted(letter.id for letter in read(broker, dead)) == sorted([lots, not_a_record])
    assert sorted(letter.id for letter in read(broker, work)) == sorted(good)

    again = dlq("replay", "--broker", broker, "--queue", dead, "--yes")
    assert again.returncode == 1, again.stderr
    assert f"Replayed 0 of 2 dead letters (none); removed them from {dead}." in again.stdout
    assert sorted(letter.id for letter in read(broker, work)) == sorted(good)  # not twice
    assert len(read(broker, dead)) == 2


def test_replay_dry_run_names_the_letters_it_would_skip_and_exits_1(
        broker: str, queues: tuple[str, str]) -> None:
    dead, work = queues
    with Connection(broker) as connection:
        fabricate(connection, dead, 2, origin=work)
        bad = malformed(connection, dead, work, task=None)
    dry = dlq("replay", "--broker", broker, "--queue", dead, "--dry-run")
    assert dry.returncode == 1, dry.stderr
    assert dry.stdout.startswith(f"2 dead letters to replay from {dead}: 2 to {work}; "
                                 "1 to skip\n")
    assert (f"Would not replay: ?[{bad}]: header 'task' is missing, not a task name"
            in dry.stderr.splitlines())
    assert len(read(broker, dead)) == 3
    assert read(broker, work) == []
