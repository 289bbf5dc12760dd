"""Replay's pace and stop, and the console's jobs: one at a time, each audited."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pytest

from celery_policies.console.jobs import AUDIT_LOGGER, Busy, Job, Jobs, describe
from celery_policies.deadletters.envelope import DeadLetter, Envelope
from celery_policies.deadletters.tools import Filters, plan, replay
from celery_policies.headers import FAILURE_HEADER


def letter(number: int) -> DeadLetter:
    headers = {"task": "proj.add", "id": f"id-{number}",
               FAILURE_HEADER: {"reason": "exception", "queue": "celery"}}
    return DeadLetter(Envelope(b"[[], {}, {}]", "application/json", "utf-8", headers, {}),
                      handle=number)


class Store:
    queue = "dlq"

    def __init__(self, count: int, gate: threading.Event | None = None) -> None:
        self.held = [letter(n) for n in range(count)]
        self.gate = gate

    def letters(self) -> Iterator[DeadLetter]:
        if self.gate is not None:
            self.gate.wait(10)
        yield from list(self.held)

    def remove(self, letters: Sequence[DeadLetter]) -> None:
        for gone in letters:
            self.held.remove(gone)

    def close(self) -> None:
        pass


class Publisher:
    def __init__(self) -> None:
        self.sent: list[tuple[float, str]] = []

    def missing(self, queues: Any) -> list[str]:
        return []

    def publish(self, envelope: Envelope, queue: str, declare: bool = True) -> None:
        self.sent.append((time.monotonic(), envelope.headers["id"]))


def test_a_rate_spaces_the_letters_out() -> None:
    store, publisher = Store(5), Publisher()
    started = time.monotonic()
    report = replay(store, publisher, plan(store.letters()), rate=10)  # type: ignore[arg-type]
    assert report.replayed == 5
    assert store.held == []
    offsets = [at - started for at, _ in publisher.sent]
    for number, offset in enumerate(offsets):
        assert offset >= number / 10 - 0.005, offsets  # the n-th no earlier than n/rate


def test_a_stop_ends_a_replay_after_the_letter_in_hand_and_says_so() -> None:
    store, publisher, stop = Store(50), Publisher(), threading.Event()
    threading.Timer(0.25, stop.set).start()
    report = replay(store, publisher, plan(store.letters()), rate=20,  # type: ignore[arg-type]
                    stop=stop)
    assert report.stopped
    assert 2 <= report.replayed < 50
    assert len(store.held) == 50 - report.replayed  # each replayed one removed, no other


def opener(store: Store) -> Any:
    @contextmanager
    def open_queue(queue: str) -> Iterator[tuple[Store, Any]]:
        yield store, None
    return open_queue


def test_one_job_at_a_time_and_each_is_audited(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=AUDIT_LOGGER)
    gate = threading.Event()
    store, changed = Store(3, gate), threading.Event()
    jobs = Jobs(opener(store), changed.set)
    first = jobs.start(Job("purge", "alice", "dlq", Filters(task="proj.*")))
    with pytest.raises(Busy, match="a purge started by alice is still running"):
        jobs.start(Job("purge", "bob", "dlq", Filters()))
    gate.set()
    assert changed.wait(10)
    assert (first.state, first.total, first.done, first.outcome) == ("done", 3, 3, "deleted 3")
    assert jobs.running() is None
    assert [record.getMessage() for record in caplog.records] == [
        "purge started by alice: queue=dlq task=proj.*",
        "purge by alice done: queue=dlq task=proj.*: deleted 3",
    ]


def test_a_job_that_fails_says_why_and_is_audited(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=AUDIT_LOGGER)

    @contextmanager
    def unreachable(queue: str) -> Iterator[Any]:
        raise ConnectionError("cannot reach the broker")
        yield

    changed = threading.Event()
    job = Jobs(unreachable, changed.set).start(Job("replay", "alice", "dlq", Filters()))
    assert changed.wait(10)
    assert (job.state, job.outcome) == ("failed", "cannot reach the broker")
    assert caplog.records[-1].getMessage() == (
        "replay by alice failed: queue=dlq all: cannot reach the broker")


def test_filters_are_described_as_the_audit_log_says_them() -> None:
    assert describe(Filters()) == "all"
    assert describe(Filters(task="proj.*", exceptions=("KeyError",), reasons=("exception",),
                            origins=("celery",), since=3600, ids=("a", "b"))) == (
        "task=proj.* exception=KeyError reason=exception failed_on=celery since=3600s "
        "id=a id=b")
