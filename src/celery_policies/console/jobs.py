"""Replay and purge from the console: the CLI's own operations (``deadletters/tools.py``), run
in a thread so that a page can show their progress, one at a time, each written to the audit
log (who, what filter, how many).

They select again from the queue itself, with the filters the person confirmed: a letter that
arrived after the preview and matches is included, one replayed meanwhile is not. Replay
removes each letter only after its publish is confirmed (at least once: never lost, at worst
run twice).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Literal

from kombu.connection import Connection

from ..deadletters.envelope import Publisher
from ..deadletters.stores import Store
from ..deadletters.tools import Filters, ReplayStopped, plan, purge, replay, select

#: Where every replay and purge is written, when it starts and when it ends.
AUDIT_LOGGER = "celery_policies.console.audit"
audit = logging.getLogger(AUDIT_LOGGER)

#: Opens a dead-letter queue by name with its connection (``deadletters.access.opened``).
OpenWithConnection = Callable[[str], AbstractContextManager[tuple[Store, Connection]]]

Kind = Literal["replay", "purge"]
#: How many finished jobs the console remembers (their pages stay readable).
KEPT = 50


class Busy(Exception):
    """Another replay or purge is running: one at a time, so two never race for a letter."""


@dataclass
class Job:
    """One replay or purge, as its page shows it."""

    kind: Kind
    who: str
    queue: str
    filters: Filters
    to_queue: str | None = None
    rate: float | None = None
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    state: Literal["reading", "running", "done", "stopped", "failed"] = "reading"
    total: int | None = None  # letters selected, once read
    done: int = 0
    outcome: str = ""  # the last line: what was done, or what went wrong
    skipped: list[str] = field(default_factory=list)  # "task[id]: why" per letter left
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    stop: threading.Event = field(default_factory=threading.Event)

    @property
    def finished(self) -> bool:
        return self.finished_at is not None


def describe(filters: Filters) -> str:
    """The filters as the audit log and the pages say them: ``task=proj.* reason=exception``."""
    parts = [f"task={filters.task}"] if filters.task is not None else []
    parts += [f"exception={name}" for name in filters.exceptions]
    parts += [f"reason={name}" for name in filters.reasons]
    parts += [f"failed_on={name}" for name in filters.origins]
    parts += [f"since={filters.since:g}s"] if filters.since is not None else []
    parts += [f"id={name}" for name in filters.ids]
    return " ".join(parts) or "all"


class Jobs:
    """Runs one job at a time; ``changed`` is called when one ends (the index re-reads)."""

    def __init__(self, open_queue: OpenWithConnection, changed: Callable[[], None], *,
                 exclusive: AbstractContextManager[Any] | None = None) -> None:
        self._open = open_queue
        self._exclusive = exclusive or contextlib.nullcontext()  # see console/index.py
        self._changed = changed
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def running(self) -> Job | None:
        with self._lock:
            return next((job for job in self._jobs.values() if not job.finished), None)

    def start(self, job: Job) -> Job:
        """Run ``job`` in a thread; raises ``Busy`` while another runs."""
        with self._lock:
            current = next((other for other in self._jobs.values() if not other.finished),
                           None)
            if current is not None:
                raise Busy(f"a {current.kind} started by {current.who} is still running")
            self._jobs[job.id] = job
            for old in list(self._jobs)[:-KEPT]:
                del self._jobs[old]
        audit.info("%s started by %s: queue=%s %s%s%s", job.kind, job.who, job.queue,
                   describe(job.filters),
                   f" to_queue={job.to_queue}" if job.to_queue else "",
                   f" rate={job.rate:g}/s" if job.rate else "")
        threading.Thread(target=self._run, args=(job,), name=f"console-{job.kind}",
                         daemon=True).start()
        return job

    def _run(self, job: Job) -> None:
        try:
            with self._exclusive, self._open(job.queue) as (store, connection):
                run = self._replay if job.kind == "replay" else self._purge
                job.outcome, stopped = run(job, store, connection)
            job.state = "stopped" if stopped else "done"
        except Exception as exc:
            job.state = "failed"
            job.outcome = f"{job.outcome + '; ' if job.outcome else ''}{exc}"
        finally:
            job.finished_at = time.time()
            audit.info("%s by %s %s: queue=%s %s: %s", job.kind, job.who, job.state,
                       job.queue, describe(job.filters), job.outcome)
            self._changed()

    def _replay(self, job: Job, store: Store, connection: Connection) -> tuple[str, bool]:
        letters = select(store, job.filters)
        chosen = plan(letters, job.to_queue)
        job.total = len(chosen.moves)
        job.skipped = [f"{letter.task}[{letter.id}]: {why}" for letter, why in chosen.skipped]
        job.state = "running"
        publisher = Publisher(connection)

        def tick(done: int) -> None:
            job.done = done

        try:
            report = replay(store, publisher, chosen, tick, rate=job.rate, stop=job.stop)
        except ReplayStopped as exc:
            job.done = exc.report.replayed
            raise
        finally:
            if publisher.connection is not connection:
                publisher.close()
        job.done = report.replayed
        where = ", ".join(f"{count} to {name}" for name, count in sorted(report.queues.items()))
        return (f"replayed {report.replayed} of {len(letters)} ({where or 'none'})"
                + (f"; {len(chosen.skipped)} not replayable, left in the queue"
                   if chosen.skipped else "")
                + ("; stopped on request" if report.stopped else "")), report.stopped

    def _purge(self, job: Job, store: Store, connection: Connection) -> tuple[str, bool]:
        letters = select(store, job.filters)
        job.total = len(letters)
        job.state = "running"
        job.done = purge(store, letters)
        return f"deleted {job.done}", False
