"""The ``dlq`` commands on hostile queues, on a real Redis list and a real RabbitMQ queue.

Random bytes, random JSON and messages with random header shapes are pushed among valid
dead letters; ``list``, ``show``, ``replay --dry-run``, ``purge --unreadable`` and ``replay``
never raise, never lose a valid letter and never duplicate one.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import redis
from benchmarks._deadletters import fabricate
from celery import Celery
from click.testing import CliRunner
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from kombu.connection import Connection
from kombu.entity import Queue

from celery_policies.cli import policies
from celery_policies.deadletters.envelope import Envelope, Publisher
from celery_policies.deadletters.tools import plan
from celery_policies.headers import FAILURE_HEADER, REPLAYS_HEADER
from tests.support.deadletters import read
from tests.support.workers import delete_queue

#: Examples per broker: each builds two queues and runs six commands (a few seconds in all).
EXAMPLES = 12

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2**31, 2**31) | st.text(max_size=12)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8)
#: The task headers a dead letter's reader and replay look at.
TASK_HEADERS = ("id", "task", "retries", "eta", "expires", "root_id", "compression",
                "correlation_id")
#: The plugin's own headers, whose shape replay relies on.
PLUGIN_HEADERS = (FAILURE_HEADER, REPLAYS_HEADER, "celery_policies_first_attempt",
                  "celery_policies_redeliveries")
HEADERS = st.dictionaries(
    st.sampled_from(TASK_HEADERS)
    | st.text(min_size=1, max_size=12).filter(lambda key: not key.startswith("celery_")),
    JSON, max_size=5)
#: One entry of the queue: a valid dead letter, or junk of some kind.
ENTRY = st.one_of(
    st.just(("valid", None)),
    st.tuples(st.just("bytes"), st.binary(max_size=64)),
    st.tuples(st.just("json"), JSON),
    st.tuples(st.just("headers"), st.tuples(HEADERS, st.binary(max_size=32))),
)
ENTRIES = st.lists(ENTRY, max_size=8).map(lambda entries: [("valid", None), *entries])
#: Letters whose plugin headers are malformed, among valid ones.
MALFORMED = st.lists(
    st.one_of(st.just(("valid", None)), st.tuples(st.just("plugin"), st.tuples(
        st.dictionaries(st.sampled_from(PLUGIN_HEADERS), JSON, min_size=1, max_size=3),
        st.binary(max_size=16)))),
    max_size=6).map(lambda entries: [("valid", None), *entries])
#: No shrinking: a failing example is shown as found, and the run stays short.
FUZZ = settings(max_examples=EXAMPLES, deadline=None, phases=[Phase.generate],
                suppress_health_check=[HealthCheck.too_slow])


def dlq(*args: str) -> int:
    """Run ``dlq ARGS`` in this process (any exception fails the test); its exit code."""
    result = CliRunner().invoke(policies, ["dlq", *args], catch_exceptions=False)
    return result.exit_code


@contextmanager
def queues(client: Celery) -> Iterator[tuple[str, str]]:
    """A dead-letter queue, and a work queue its valid letters came from (declared: replay
    publishes only to queues that exist)."""
    dead, work = f"fuzz.{uuid.uuid4().hex[:12]}", f"fuzz.work.{uuid.uuid4().hex[:12]}"
    with client.connection_for_write() as connection:
        Queue(work, durable=True)(connection.default_channel).declare()
    try:
        yield dead, work
    finally:
        delete_queue(client, dead)
        delete_queue(client, work)


def push(broker: str, queue: str, work: str, entries: list[tuple[str, Any]]) -> list[str]:
    """Put ``entries`` in ``queue``, in order; the task ids of the valid ones."""
    valid = []
    with Connection(broker) as connection:
        publisher = Publisher(connection)
        try:
            for kind, value in entries:
                if kind == "valid":
                    valid += fabricate(connection, queue, 1, origin=work)
                elif kind in ("bytes", "json"):
                    raw = value if kind == "bytes" else json.dumps(value).encode()
                    if broker.startswith("redis"):
                        redis.Redis.from_url(broker).lpush(queue, raw)  # not a kombu message
                    else:
                        publisher.publish(Envelope(raw, "application/json", "utf-8", {}, {}),
                                          queue)
                else:
                    headers, body = value
                    if kind == "plugin":  # a letter that says it came from ``work``
                        headers = {"task": "proj.noop", "id": str(uuid.uuid4()),
                                   FAILURE_HEADER: {"queue": work}, **headers}
                    publisher.publish(Envelope(body, None, None, headers, {}), queue)
        finally:
            if publisher.connection is not connection:
                publisher.close()
    return valid


def valid_ids(broker: str, queue: str) -> Counter[str]:
    return Counter(letter.id for letter in read(broker, queue) if letter.problem is None)


def read_commands_keep_every_letter(broker: str, dead: str, valid: list[str]) -> None:
    source = ("--broker", broker, "--queue", dead)
    before = valid_ids(broker, dead)
    assert all(before[task_id] == 1 for task_id in valid)
    assert dlq("list", *source) == 0
    assert dlq("list", *source, "--format", "json") == 0
    assert dlq("list", *source, "--task", "proj.*", "--format", "json") == 0
    assert dlq("show", valid[0], *source) == 0
    skips = bool(plan(read(broker, dead)).skipped)
    assert dlq("replay", *source, "--dry-run") == (1 if skips else 0)
    assert valid_ids(broker, dead) == before
    assert dlq("purge", *source, "--unreadable", "--yes") == 0
    assert valid_ids(broker, dead) == before
    assert [letter.problem for letter in read(broker, dead) if letter.problem] == []


def replay_moves_each_valid_letter_once(broker: str, dead: str, work: str,
                                        valid: list[str]) -> None:
    skips = bool(plan(read(broker, dead)).skipped)
    assert dlq("replay", "--broker", broker, "--queue", dead, "--yes") == (1 if skips else 0)
    left, moved = valid_ids(broker, dead), valid_ids(broker, work)
    for task_id in valid:
        assert (left[task_id], moved[task_id]) == (0, 1), task_id


@pytest.mark.parametrize("entries", [ENTRIES, MALFORMED],
                         ids=["hostile-entries", "malformed-plugin-headers"])
def test_hostile_entries_never_break_a_command_lose_or_duplicate_a_valid_letter(
        broker: str, client: Celery, entries: st.SearchStrategy[list[tuple[str, Any]]]) -> None:
    @FUZZ
    @given(entries=entries)
    def run(entries: list[tuple[str, Any]]) -> None:
        with queues(client) as (dead, work):
            valid = push(broker, dead, work, entries)
            read_commands_keep_every_letter(broker, dead, valid)
            replay_moves_each_valid_letter_once(broker, dead, work, valid)

    run()
