"""The console's index: a summary of each dead letter that the same filters select exactly as
they select the letter itself, groups counted and dated, and readings made in a thread."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from celery_policies.console.index import LetterIndex, Summary, chosen, groups
from celery_policies.deadletters.envelope import DeadLetter, Envelope
from celery_policies.deadletters.tools import Filters
from celery_policies.headers import FAILURE_HEADER, REPLAYS_HEADER

NOW = datetime.now(timezone.utc)
TEXT = st.one_of(st.none(), st.integers(-2, 2), st.sampled_from(
    ["", "exception", "time_limit", "ConnectionError", "a.b.ConnectionError", "proj.add",
     "proj.[x]", "celery", "*"]))


def dead(task: Any = "proj.add", *, exception: Any = "ConnectionError", reason: Any = "exception",
         queue: Any = "celery", failed_at: Any = None, replays: Any = None,
         record: bool = True, task_id: str = "id-1") -> DeadLetter:
    headers: dict[str, Any] = {"task": task, "id": task_id}
    if record:
        headers[FAILURE_HEADER] = {"exception": exception, "reason": reason, "queue": queue,
                                   "failed_at": failed_at}
    if replays is not None:
        headers[REPLAYS_HEADER] = replays
    return DeadLetter(Envelope(b"[[], {}, {}]", "application/json", "utf-8", headers, {}))


@settings(max_examples=1500)
@given(task=TEXT, exception=TEXT, reason=TEXT, queue=TEXT, record=st.booleans(),
       ago=st.one_of(st.none(), st.integers(0, 7200)),
       glob=st.one_of(st.none(), st.sampled_from(["proj.*", "proj.add", "proj.[[]x]", "*"])),
       names=st.lists(st.sampled_from(["ConnectionError", "a.b.ConnectionError", "", "x"]),
                      max_size=2),
       reasons=st.lists(st.sampled_from(["exception", "", "-1", "time_limit"]), max_size=2),
       origins=st.lists(st.sampled_from(["celery", "other", "*"]), max_size=1),
       since=st.one_of(st.none(), st.sampled_from([60.0, 3600.0])))
def test_the_filters_select_a_summary_exactly_as_they_select_its_letter(
        task: Any, exception: Any, reason: Any, queue: Any, record: bool, ago: int | None,
        glob: str | None, names: list[str], reasons: list[str], origins: list[str],
        since: float | None) -> None:
    failed_at = (NOW - timedelta(seconds=ago)).isoformat() if ago is not None else None
    letter = dead(task, exception=exception, reason=reason, queue=queue, failed_at=failed_at,
                  record=record)
    filters = Filters(task=glob, exceptions=tuple(names), since=since,
                      reasons=tuple(reasons), origins=tuple(origins))
    assert filters(Summary.of("dlq", letter)) == filters(letter)


def test_an_unreadable_letter_is_summarised_with_its_problem_and_matches_as_it_would() -> None:
    broken = DeadLetter(Envelope(b"?", None, None, {}, {}), problem="entry 3: not JSON (1 bytes)")
    summary = Summary.of("dlq", broken)
    assert summary.problem == broken.problem
    for filters in (Filters(), Filters(unreadable=True), Filters(task="*")):
        assert filters(summary) == filters(broken)


def test_a_summary_keeps_the_replay_count_only_when_it_is_a_whole_number() -> None:
    assert Summary.of("dlq", dead(replays=2)).replays == 2
    assert Summary.of("dlq", dead(replays="lots")).replays == 0
    assert Summary.of("dlq", dead(replays=True)).replays == 0


def test_groups_count_and_date_each_task_exception_and_reason() -> None:
    times = [NOW - timedelta(minutes=m) for m in (30, 10, 20)]
    letters = [Summary.of("dlq", dead(failed_at=when.isoformat())) for when in times]
    letters.append(Summary.of("dlq", dead(reason="time_limit")))
    letters.append(Summary.of("other", dead()))
    found = {(g.queue, g.reason): g for g in groups(iter(letters))}
    main = found[("dlq", "exception")]
    assert (main.count, main.oldest, main.newest) == (3, min(times), max(times))
    assert found[("dlq", "time_limit")].count == 1
    assert found[("dlq", "time_limit")].oldest is None
    assert found[("other", "exception")].count == 1

    assert groups(iter(letters))[0].count == 3


class Opener:
    """Queues of letters, opened as the console opens a store; ``gate`` holds a reading."""

    def __init__(self, queues: dict[str, list[DeadLetter]]) -> None:
        self.queues = queues
        self.gate = threading.Event()
        self.gate.set()

    @contextmanager
    def __call__(self, queue: str) -> Iterator[Any]:
        if queue not in self.queues:
            raise ConnectionError(f"cannot reach the broker for {queue}")
        letters, gate = self.queues[queue], self.gate

        class Store:
            counting = False

            def letters(self) -> Iterator[DeadLetter]:
                for letter in letters:
                    gate.wait(10)
                    yield letter

        yield Store()


def test_the_first_page_starts_a_reading_and_answers_before_it_ends() -> None:
    opener = Opener({"dlq": [dead(task_id=str(n)) for n in range(3)]})
    opener.gate.clear()
    index = LetterIndex(opener, ["dlq"], refresh=60)
    assert index.reading.finished_at is None  # answered at once, empty
    assert index.reading_now == 0
    opener.gate.set()
    reading = index.refresh(wait=10)
    assert [letter.id for letter in reading.letters] == ["0", "1", "2"]
    assert index.reading_now is None


def test_a_fresh_reading_is_served_until_it_is_older_than_refresh() -> None:
    opener = Opener({"dlq": [dead()]})
    index = LetterIndex(opener, ["dlq"], refresh=60)
    first = index.refresh(wait=10)
    opener.queues["dlq"] = []
    assert index.reading is first  # not stale: no new reading
    assert index.reading_now is None
    index.refresh_after = 0
    assert index.reading.letters  # stale: served, and a new reading starts
    assert index.refresh(wait=10).letters == ()


def test_a_queue_that_cannot_be_read_is_named_and_the_others_are_read() -> None:
    opener = Opener({"good": [dead(), dead(task_id="2")]})
    reading = LetterIndex(opener, ["bad", "good"]).refresh(wait=10)
    assert reading.errors == ("bad: cannot reach the broker for bad",)
    assert [(s.queue, s.id) for s in reading.letters] == [("good", "id-1"), ("good", "2")]
    assert [s.id for s in chosen(reading, Filters(), "good")] == ["id-1", "2"]
    assert list(chosen(reading, Filters(), "bad")) == []
