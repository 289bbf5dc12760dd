"""What the console knows of the dead-letter queues: one small summary per letter, read in the
background, so that a page answers from memory however many letters there are.

Counting 100,000 dead letters by task, exception and reason means reading all of them, which
takes seconds (docs/benchmarks.md, "The console"); a page cannot wait for that. The index reads
every queue in a thread and keeps, per letter, only what the pages group and filter by (a
``Summary``: id, task, exception, reason, when, the queue it failed on), never its arguments or
traceback. A page is served from the last complete reading, which says how old it is; a page
asked for when that reading is older than ``refresh`` seconds starts a new one. Nothing is read
while nobody looks. A RabbitMQ quorum queue counts each reading as a delivery and drops a
letter after its delivery limit: once a reading finds one (``Store.counting``), the index
reads it again only when asked (``refresh``: a person's "read again", or after a replay or
purge).

On RabbitMQ a reading holds every message it has read, unacknowledged, until it ends, so that
an operation selecting meanwhile would miss them: there the readings, the operations and a
letter's page take turns (``exclusive``, a lock the console passes to each).

Replay and purge never act on this summary: they select again, with the same ``Filters``, from
the queue itself (``console/jobs.py``); the summary only gives the preview its figure.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..deadletters.stores import Store
from ..deadletters.tools import Filters
from ..headers import REPLAYS_HEADER

#: Seconds a reading serves pages before a page asks for a new one.
DEFAULT_REFRESH = 10.0

#: Opens a dead-letter queue by name, for one reading (``deadletters.access.opened``).
OpenQueue = Callable[[str], AbstractContextManager[Store]]


@dataclass(frozen=True, slots=True)
class Summary:
    """One dead letter as the index keeps it. It reads like a ``DeadLetter`` to ``Filters``."""

    queue: str  # the dead-letter queue holding it
    id: str
    task: str
    exception: str
    reason: str
    failed_at: datetime | None
    failed_on: str | None  # the queue the task failed on
    replays: int
    problem: str | None

    @property
    def failure(self) -> dict[str, Any]:
        return {"exception": self.exception, "reason": self.reason}

    def origin(self) -> str | None:
        return self.failed_on

    @classmethod
    def of(cls, queue: str, letter: Any) -> Summary:
        failure = letter.failure
        replays = letter.envelope.headers.get(REPLAYS_HEADER)
        origin = letter.origin() if letter.problem is None else None
        return cls(_shared(queue), _text(letter.id), _shared(_text(letter.task)),
                   _shared(_text(failure.get("exception") or "")),
                   _shared(_text(failure.get("reason") or "")),
                   letter.failed_at if letter.problem is None else None,
                   _shared(origin) if origin else None,
                   replays if isinstance(replays, int) and not isinstance(replays, bool) else 0,
                   letter.problem)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else str(value)


def _shared(value: str) -> str:
    """One copy of each task, exception and queue name however many letters repeat it."""
    return sys.intern(value)


@dataclass(frozen=True)
class Group:
    """The dead letters of one task, exception and reason in one dead-letter queue."""

    queue: str
    task: str
    exception: str
    reason: str
    count: int
    oldest: datetime | None
    newest: datetime | None
    unreadable: bool = False


@dataclass(frozen=True)
class Reading:
    """One complete reading of every queue: the letters oldest first within each queue."""

    letters: tuple[Summary, ...] = ()
    finished_at: float | None = None  # epoch seconds; None before the first reading ends
    took: float = 0.0
    errors: tuple[str, ...] = ()  # one line per queue that could not be read
    #: Queues whose letters carry a delivery count (RabbitMQ quorum queues): each reading is
    #: a delivery, and the queue drops a letter after its ``x-delivery-limit`` of them, so
    #: they are read again only when someone asks (``refresh``), never because a page is old.
    counting: tuple[str, ...] = ()


@dataclass
class _Progress:
    read: int = 0
    started_at: float = field(default_factory=time.time)


class LetterIndex:
    """The summaries of every letter in ``queues``, read by ``open_queue`` in a thread."""

    def __init__(self, open_queue: OpenQueue, queues: Sequence[str], *,
                 refresh: float = DEFAULT_REFRESH,
                 exclusive: AbstractContextManager[Any] | None = None) -> None:
        self.queues = tuple(queues)
        self._exclusive = exclusive or contextlib.nullcontext()
        self.refresh_after = refresh
        self._open = open_queue
        self._lock = threading.Lock()
        self._reading = Reading()
        self._progress: _Progress | None = None  # set while a reading runs
        self._done = threading.Condition(self._lock)
        self._counting: set[str] = set()  # queues that count deliveries (Store.counting)

    @property
    def reading(self) -> Reading:
        """The last complete reading; a new one starts when it is stale."""
        with self._lock:
            last = self._reading
            stale = last.finished_at is None or (
                not last.counting and time.time() - last.finished_at >= self.refresh_after)
            if stale and self._progress is None:
                self._start()
            return self._reading

    @property
    def reading_now(self) -> int | None:
        """How many letters the reading under way has read so far; None when none runs."""
        with self._lock:
            return self._progress.read if self._progress is not None else None

    def refresh(self, *, wait: float | None = None) -> Reading:
        """Start a new reading (unless one runs); with ``wait``, wait that many seconds at
        most for it to end."""
        with self._lock:
            if self._progress is None:
                self._start()
            if wait is not None:
                self._done.wait_for(lambda: self._progress is None, timeout=wait)
            return self._reading

    def _start(self) -> None:
        self._progress = _Progress()
        threading.Thread(target=self._read, args=(self._progress,), name="console-index",
                         daemon=True).start()

    def _read(self, progress: _Progress) -> None:
        letters: list[Summary] = []
        errors: list[str] = []
        with self._exclusive:
            for queue in self.queues:
                try:
                    with self._open(queue) as store:
                        for letter in store.letters():
                            letters.append(Summary.of(queue, letter))
                            progress.read += 1
                        if store.counting:
                            self._counting.add(queue)
                except Exception as exc:  # a broker that is down: said on the page, kept going
                    errors.append(f"{queue}: {exc or type(exc).__name__}")
        finished = time.time()
        with self._lock:
            counting = tuple(sorted(self._counting))
            self._reading = Reading(tuple(letters), finished, finished - progress.started_at,
                                    tuple(errors), counting)
            self._progress = None
            self._done.notify_all()


def chosen(reading: Reading, filters: Filters, queue: str | None = None) -> Iterator[Summary]:
    """The summaries ``filters`` select, in ``queue`` only when given, oldest first."""
    for letter in reading.letters:
        if (queue is None or letter.queue == queue) and filters(letter):
            yield letter


def groups(letters: Iterator[Summary]) -> list[Group]:
    """``letters`` by queue, task, exception and reason, the largest group first."""
    found: dict[tuple[str, str, str, str, bool], list[Any]] = {}
    for letter in letters:
        key = (letter.queue, letter.task, letter.exception, letter.reason,
               letter.problem is not None)
        entry = found.get(key)
        when = letter.failed_at
        if entry is None:
            found[key] = [1, when, when]
            continue
        entry[0] += 1
        if when is not None:
            if entry[1] is None or when < entry[1]:
                entry[1] = when
            if entry[2] is None or when > entry[2]:
                entry[2] = when
    made = [Group(queue, task, exception, reason, count, oldest, newest, unreadable)
            for (queue, task, exception, reason, unreadable), (count, oldest, newest)
            in found.items()]
    made.sort(key=lambda group: (-group.count, group.queue, group.task, group.exception))
    return made
