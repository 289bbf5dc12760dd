"""The dead-letter tools: select, replay and purge, on any store (``stores.py``).

Replay is at least once: each dead letter is published to its queue, the publish confirmed,
and only then removed from the dead-letter queue, before the next one. A crash in between can
leave that one message in both places (it runs twice), never in neither. A dead letter that
cannot be replayed (unreadable, malformed headers, no queue) is skipped with a reason.
"""

from __future__ import annotations

import fnmatch
import functools
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from threading import Event
from typing import Any, Protocol

from ..errors import PolicyError
from .envelope import DeadLetter, Envelope, Publisher, matches_exception
from .stores import Store

#: Why a dead letter with no recorded queue is not replayed without ``--to-queue``.
NO_QUEUE = "no original queue recorded (use --to-queue)"


@functools.lru_cache(maxsize=4096)
def _glob_matches(name: str, glob: str) -> bool:
    """``fnmatchcase``, remembered: a queue of 100,000 letters holds a few dozen task names
    (the console filters its whole index on every page)."""
    return fnmatch.fnmatchcase(name, glob)


class Facts(Protocol):
    """What the filters read of a dead letter: a ``DeadLetter``, or the console's summary of
    one (``console/index.py``), which the same filters must select alike."""

    @property
    def problem(self) -> str | None: ...
    @property
    def id(self) -> str: ...
    @property
    def task(self) -> str: ...
    @property
    def failure(self) -> dict[str, Any]: ...
    @property
    def failed_at(self) -> datetime | None: ...
    def origin(self) -> str | None: ...


@dataclass(frozen=True)
class Filters:
    """Which dead letters a command works on; every filter given must match.

    An unreadable letter (one with a ``problem``) matches no filter: only no filter at all
    (every letter), or ``unreadable``, which matches exactly the unreadable ones.
    """

    task: str | None = None
    exceptions: tuple[str, ...] = ()
    since: float | None = None  # seconds before now
    ids: tuple[str, ...] = ()
    unreadable: bool = False
    reasons: tuple[str, ...] = ()  # the failure record's reason: exception, time_limit, ...
    origins: tuple[str, ...] = ()  # the queue the task failed on

    @property
    def narrowing(self) -> bool:
        """Whether any filter on what a letter says is given."""
        return bool(self.task is not None or self.exceptions or self.since is not None
                    or self.ids or self.reasons or self.origins)

    def __call__(self, letter: Facts) -> bool:
        if letter.problem is not None:
            return self.unreadable or not self.narrowing
        if self.unreadable:
            return False
        if self.ids and letter.id not in self.ids:
            return False
        if self.task is not None and not _glob_matches(letter.task, self.task):
            return False
        if self.exceptions and not matches_exception(letter, self.exceptions):
            return False
        if self.reasons and str(letter.failure.get("reason") or "") not in self.reasons:
            return False
        if self.origins and letter.origin() not in self.origins:
            return False
        if self.since is not None:
            failed_at = letter.failed_at
            cutoff = datetime.now(timezone.utc) - timedelta(seconds=self.since)
            if failed_at is None or failed_at < cutoff:
                return False
        return True


def select(store: Store, filters: Filters = Filters(), limit: int | None = None, *,
           passed_over: list[DeadLetter] | None = None) -> list[DeadLetter]:
    """The matching dead letters, oldest first, at most ``limit``; nothing is removed.
    Unreadable letters the filters could not match are added to ``passed_over``."""
    chosen = []
    for letter in store.letters():
        if filters(letter):
            chosen.append(letter)
            if limit is not None and len(chosen) >= limit:
                break
        elif letter.problem is not None and passed_over is not None:
            passed_over.append(letter)
    return chosen


@dataclass(frozen=True)
class Move:
    """One dead letter to replay: the message to publish and where."""

    letter: DeadLetter
    message: Envelope
    queue: str


@dataclass
class Plan:
    """What a replay does: the letters it moves, and those it leaves, each with why."""

    moves: list[Move] = field(default_factory=list)
    skipped: list[tuple[DeadLetter, str]] = field(default_factory=list)

    def targets(self) -> Counter[str]:
        """How many dead letters go to each queue."""
        return Counter(move.queue for move in self.moves)


def plan(letters: Iterable[DeadLetter], to_queue: str | None = None,
         new_id: bool = False) -> Plan:
    """Sort ``letters`` into those replay publishes (each message built now) and those it
    skips: unreadable (``problem``), malformed (a header a worker could not use), or with no
    queue to go back to. One bad letter never stops the others."""
    chosen = Plan()
    for letter in letters:
        if letter.problem is not None:
            chosen.skipped.append((letter, f"unreadable: {letter.problem}"))
            continue
        try:
            message = letter.replay(new_id=new_id)
        except Exception as exc:  # whatever a hostile header makes of it: never abort
            chosen.skipped.append((letter, str(exc) or type(exc).__name__))
            continue
        queue = to_queue or letter.origin()
        if queue is None:
            chosen.skipped.append((letter, NO_QUEUE))
        else:
            chosen.moves.append(Move(letter, message, queue))
    return chosen


@dataclass
class ReplayReport:
    """What a replay did: how many went to each queue, and which could not be replayed."""

    queues: Counter[str] = field(default_factory=Counter)
    skipped: list[tuple[DeadLetter, str]] = field(default_factory=list)
    stopped: bool = False  # asked to stop before the end (``replay``'s ``stop``)

    @property
    def replayed(self) -> int:
        return sum(self.queues.values())


class ReplayStopped(PolicyError):
    """A publish or a removal failed: the replay stopped there. ``report`` says what was
    done; every letter replayed was removed, the rest are still in the queue."""

    def __init__(self, message: str, report: ReplayReport) -> None:
        super().__init__(message)
        self.report = report


def replay(store: Store, publisher: Publisher, chosen: Plan,
           progress: Callable[[int], None] = lambda done: None, *,
           rate: float | None = None, stop: Event | None = None) -> ReplayReport:
    """Publish each move of ``chosen``, and remove its letter from the dead-letter queue as
    soon as the publish is confirmed, so that a replay stopped half-way (a broker error, a
    kill) leaves only what was not replayed, and running it again replays nothing twice.

    ``rate`` caps the pace at that many letters a second, so that a replay does not flatten
    the service that failed; ``stop``, once set, ends the replay after the letter in hand
    (the report then says how far it got, and ``stopped`` is true).

    RabbitMQ drops a message published to a queue that does not exist, so every target queue
    must exist first; it is never created here (workers declare their queues themselves).
    """
    missing = publisher.missing(chosen.targets())
    if missing:
        raise PolicyError(f"no such queue on the broker: {', '.join(sorted(missing))}; start "
                          "a worker that consumes it, or choose another with --to-queue")
    report = ReplayReport(skipped=list(chosen.skipped))
    started = time.monotonic()
    stop = stop or Event()
    for count, move in enumerate(chosen.moves, 1):
        # with a rate, the count-th letter goes no earlier than (count - 1) / rate seconds in
        ahead = started + (count - 1) / rate - time.monotonic() if rate else 0.0
        if stop.wait(ahead) if ahead > 0 else stop.is_set():
            report.stopped = True
            break
        try:
            publisher.publish(move.message, move.queue, declare=False)
        except Exception as exc:
            raise ReplayStopped(f"could not publish {move.letter.task}[{move.letter.id}] to "
                                f"{move.queue}: {exc}", report) from exc
        report.queues[move.queue] += 1
        try:
            store.remove([move.letter])
        except Exception as exc:
            raise ReplayStopped(f"replayed {move.letter.task}[{move.letter.id}] to "
                                f"{move.queue} but could not remove it from {store.queue} "
                                f"(it is now in both): {exc}", report) from exc
        progress(count)
    return report


def purge(store: Store, letters: Sequence[DeadLetter]) -> int:
    """Delete ``letters`` from the queue; how many."""
    store.remove(letters)
    return len(letters)
