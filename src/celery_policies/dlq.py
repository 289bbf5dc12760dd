"""The dead-letter tools: select, replay and purge, on any store (``stores.py``).

Replay is at least once: each dead letter is published to its queue, the publish confirmed,
and only then removed from the dead-letter queue. A crash in between can leave a message in
both places (it runs twice), never in neither.
"""

from __future__ import annotations

import fnmatch
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from .deadletter import DeadLetter, Publisher, matches_exception
from .errors import PolicyError
from .stores import Store

#: Replay publishes this many dead letters, then removes them from the queue in one go.
REPLAY_BATCH = 200


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

    @property
    def narrowing(self) -> bool:
        """Whether any filter on what a letter says is given."""
        return bool(self.task is not None or self.exceptions or self.since is not None
                    or self.ids)

    def __call__(self, letter: DeadLetter) -> bool:
        if letter.problem is not None:
            return self.unreadable or not self.narrowing
        if self.unreadable:
            return False
        if self.ids and letter.id not in self.ids:
            return False
        if self.task is not None and not fnmatch.fnmatchcase(letter.task, self.task):
            return False
        if self.exceptions and not matches_exception(letter, self.exceptions):
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


@dataclass
class ReplayReport:
    """What a replay did: how many went to each queue, and which could not be replayed."""

    queues: Counter[str] = field(default_factory=Counter)
    skipped: list[tuple[DeadLetter, str]] = field(default_factory=list)

    @property
    def replayed(self) -> int:
        return sum(self.queues.values())


def targets(letters: Iterable[DeadLetter], to_queue: str | None) -> Counter[str]:
    """How many dead letters go to each queue (letters with no queue are left out)."""
    queues = (to_queue or letter.origin() for letter in letters)
    return Counter(queue for queue in queues if queue)


def replay(store: Store, publisher: Publisher, letters: Sequence[DeadLetter], *,
           to_queue: str | None = None, new_id: bool = False,
           progress: Callable[[int], None] = lambda done: None) -> ReplayReport:
    """Put ``letters`` back on their original queue (or ``to_queue``), then remove them.

    RabbitMQ drops a message published to a queue that does not exist, so every target queue
    must exist first; it is never created here (workers declare their queues themselves).
    """
    missing = publisher.missing(targets(letters, to_queue))
    if missing:
        raise PolicyError(f"no such queue on the broker: {', '.join(sorted(missing))}; start "
                          "a worker that consumes it, or choose another with --to-queue")
    report = ReplayReport()
    done: list[DeadLetter] = []
    for count, letter in enumerate(letters, 1):
        queue = to_queue or letter.origin()
        if queue is None:
            report.skipped.append((letter, "no original queue recorded (use --to-queue)"))
        else:
            publisher.publish(letter.replay(new_id=new_id), queue, declare=False)
            report.queues[queue] += 1
            done.append(letter)
        if len(done) >= REPLAY_BATCH:
            store.remove(done)
            done.clear()
        progress(count)
    store.remove(done)
    return report


def purge(store: Store, letters: Sequence[DeadLetter]) -> int:
    """Delete ``letters`` from the queue; how many."""
    store.remove(letters)
    return len(letters)
