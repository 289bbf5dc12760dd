"""``dlq replay`` with dead letters it cannot replay: it skips each with a reason, replays the
rest exactly once, and exits 1 (kombu's filesystem transport; the same on real brokers in
tests/integration/test_dlq_replay.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any
from uuid import uuid4

import pytest

import celery_policies.deadletters.tools
from celery_policies.deadletters.envelope import DeadLetter, Envelope, Publisher, dead_letter
from celery_policies.deadletters.tools import plan, replay
from celery_policies.headers import FAILURE_HEADER, REPLAYS_HEADER
from tests.unit import test_dlq_cli
from tests.unit.test_deadletters import letter
from tests.unit.test_dlq_cli import DLQ, Broker, on_app

#: The filesystem broker fixture of tests/unit/test_dlq_cli.py, under another name.
filesystem_broker = test_dlq_cli.broker


@pytest.fixture
def broker(filesystem_broker: Broker) -> Broker:
    """A filesystem broker and its app module, as in tests/unit/test_dlq_cli.py."""
    return filesystem_broker

_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def publish(broker: Broker, *, headers: dict[str, Any] | None = None,
            failure: Any = None) -> str:
    """One dead letter of ``proj.add`` from queue ``work``, its headers changed by ``headers``
    (a value of None removes the header) and its failure record replaced by ``failure``."""
    task_id = str(uuid4())
    record = {"reason": "exception", "exception": "ConnectionError", "queue": "work"}
    envelope = dead_letter(Envelope(json.dumps([[1], {}, _EMBED]).encode(), "application/json",
                                    "utf-8", {"lang": "py", "task": "proj.add", "id": task_id,
                                              "retries": 1}, {"correlation_id": task_id}),
                           record if failure is None else failure)
    changed = {**envelope.headers, **(headers or {})}
    envelope = Envelope(envelope.body, envelope.content_type, envelope.content_encoding,
                        {k: v for k, v in changed.items() if v is not None},
                        envelope.properties)
    with broker.app.connection_for_write() as connection:
        Publisher(connection).publish(envelope, DLQ)
    return task_id


def ids(messages: list[dict[str, Any]]) -> list[str]:
    return sorted(message["headers"]["id"] for message in messages)


# DeadLetter.replay refuses what a worker could not run again


@pytest.mark.parametrize(("headers", "named"), [
    ({REPLAYS_HEADER: "lots"}, f"header {REPLAYS_HEADER!r} is str 'lots'"),
    ({REPLAYS_HEADER: -1}, f"header {REPLAYS_HEADER!r} is int -1"),
    ({REPLAYS_HEADER: True}, f"header {REPLAYS_HEADER!r} is bool True"),
    ({FAILURE_HEADER: "boom"}, f"header {FAILURE_HEADER!r} is str 'boom', not a record"),
    ({FAILURE_HEADER: None}, f"header {FAILURE_HEADER!r} is missing"),
    ({"task": None}, "header 'task' is missing, not a task name"),
    ({"task": 42}, "header 'task' is int 42, not a task name"),
    ({"id": ""}, "header 'id' is str '', not a task id"),
], ids=["replays-text", "replays-negative", "replays-bool", "failure-text", "no-failure",
        "no-task", "task-number", "empty-id"])
def test_replay_of_a_malformed_letter_raises_naming_the_header(
        headers: dict[str, Any], named: str) -> None:
    bad = letter(headers=headers)
    bad = DeadLetter(Envelope(bad.envelope.body, bad.envelope.content_type, "utf-8",
                              {k: v for k, v in bad.envelope.headers.items() if v is not None},
                              bad.envelope.properties))
    with pytest.raises(ValueError, match="^" + named.replace("(", r"\(")):
        bad.replay()


def test_replay_of_a_task_protocol_1_letter_needs_no_task_or_id_header() -> None:
    """Protocol 1 carries the task name and id in the body, not in headers."""
    old = letter()
    headers = {k: v for k, v in old.envelope.headers.items() if k not in ("task", "id")}
    replayed = DeadLetter(Envelope(old.envelope.body, "application/json", "utf-8", headers,
                                   old.envelope.properties)).replay()
    assert (replayed.headers["retries"], replayed.headers[REPLAYS_HEADER]) == (0, 1)


def test_replay_of_a_letter_with_a_non_integer_priority_raises() -> None:
    with pytest.raises(ValueError, match=f"{FAILURE_HEADER}.priority' is str 'high'"):
        letter(priority="high").replay()


def test_replay_of_an_unreadable_letter_raises_its_problem() -> None:
    unreadable = DeadLetter(letter().envelope, problem="not JSON: b'\\x00garbage'")
    with pytest.raises(ValueError, match="not JSON"):
        unreadable.replay()


# dlq.plan and dlq.replay


class ListStore:
    """A store over a list, recording what was removed and when."""

    queue = "dlq"

    def __init__(self, letters: Sequence[DeadLetter], events: list[str]) -> None:
        self._letters = list(letters)
        self.events = events

    def letters(self) -> Iterator[DeadLetter]:
        yield from self._letters

    def remove(self, letters: Sequence[DeadLetter]) -> None:
        self.events += [f"removed {one.id}" for one in letters]

    def close(self) -> None:
        pass


class ListPublisher:
    """A publisher recording what it published, failing at the ``fail_at``-th publish."""

    def __init__(self, events: list[str], fail_at: int | None = None) -> None:
        self.events = events
        self.fail_at = fail_at

    def missing(self, queues: Any) -> list[str]:
        return []

    def publish(self, envelope: Envelope, queue: str, *args: Any, **kwargs: Any) -> None:
        if sum(event.startswith("published") for event in self.events) + 1 == self.fail_at:
            raise ConnectionError("connection reset")
        self.events.append(f"published {envelope.headers['id']} to {queue}")


def good(task_id: str) -> DeadLetter:
    return letter(headers={"id": task_id})


def test_plan_skips_unreadable_and_malformed_letters_with_their_reason() -> None:
    letters = [good("a"), DeadLetter(good("b").envelope, problem="truncated body"),
               letter(headers={"id": "c", REPLAYS_HEADER: "lots"}), letter(queue=None)]
    chosen = plan(letters)
    assert [move.letter.id for move in chosen.moves] == ["a"]
    assert [(skip.id, why) for skip, why in chosen.skipped] == [
        ("b", "unreadable: truncated body"),
        ("c", f"header {REPLAYS_HEADER!r} is str 'lots', not a whole number >= 0"),
        (letter().id, "no original queue recorded (use --to-queue)")]
    assert chosen.targets() == {"work": 1}


def test_replay_removes_each_letter_right_after_its_publish() -> None:
    events: list[str] = []
    store = ListStore([good("a"), good("b")], events)
    report = replay(store, ListPublisher(events), plan(store.letters()))  # type: ignore[arg-type]
    assert events == ["published a to work", "removed a", "published b to work", "removed b"]
    assert report.replayed == 2


def test_a_failed_publish_stops_the_replay_with_what_was_done_removed() -> None:
    events: list[str] = []
    store = ListStore([good("a"), good("b"), good("c")], events)
    with pytest.raises(celery_policies.deadletters.tools.ReplayStopped) as stopped:
        replay(store, ListPublisher(events, fail_at=2),  # type: ignore[arg-type]
               plan(store.letters()))
    assert events == ["published a to work", "removed a"]
    assert stopped.value.report.replayed == 1
    assert "connection reset" in str(stopped.value)


# the command


def test_replay_skips_a_malformed_letter_replays_the_others_once_and_exits_1(
        broker: Broker) -> None:
    first = broker.fabricate(2)
    bad = publish(broker, headers={REPLAYS_HEADER: "lots"})
    worse = publish(broker, failure="not a dict")
    last = broker.fabricate(2)
    result = on_app("replay", "--yes")
    assert result.exit_code == 1
    assert "Replayed 4 of 6 dead letters (4 to work)" in result.stdout
    assert (f"Not replayed: proj.add[{bad}]: header {REPLAYS_HEADER!r} is str 'lots', not a "
            "whole number >= 0") in result.stderr
    assert (f"Not replayed: proj.add[{worse}]: header {FAILURE_HEADER!r} is str 'not a dict', "
            "not a record") in result.stderr
    assert "Traceback" not in result.output
    assert ids(broker.messages("work")) == sorted(first + last)
    assert ids(broker.messages(DLQ)) == sorted([bad, worse])

    again = on_app("replay", "--yes")
    assert again.exit_code == 1
    assert "Replayed 0 of 2 dead letters" in again.stdout
    assert ids(broker.messages("work")) == sorted(first + last)  # none published twice


def test_replay_dry_run_lists_what_it_would_skip_and_exits_1(broker: Broker) -> None:
    broker.fabricate(1)
    bad = publish(broker, headers={"task": None})
    result = on_app("replay", "--dry-run")
    assert result.exit_code == 1
    assert result.stdout.startswith(f"1 dead letter to replay from {DLQ}: 1 to work; "
                                    "1 to skip\n")
    assert (f"Would not replay: ?[{bad}]: header 'task' is missing, not a task name"
            in result.stderr)
    assert (len(broker.files(DLQ)), broker.files("work")) == (2, [])


def test_replay_of_only_malformed_letters_publishes_nothing_and_exits_1(
        broker: Broker) -> None:
    bad = publish(broker, failure=["a", "list"])
    result = on_app("replay", "--yes")
    assert result.exit_code == 1
    assert "Replayed 0 of 1 dead letter (none)" in result.stdout
    assert f"Not replayed: proj.add[{bad}]" in result.stderr
    assert (ids(broker.messages(DLQ)), broker.files("work")) == ([bad], [])
