"""Do the running workers apply the same policies? ``celery-policies fleet`` asks them.

Every worker answers the ``policies`` inspect command (``worker/inspect.py``) with the
fingerprint of what it applies. A worker is ok when its fingerprint is the expected one: the
fingerprint a given policy file yields for the app's tasks, else the one most workers share.
Workers with another fingerprint, without policies, or that cannot answer the command drift;
so does every worker when no fingerprint is shared by more workers than any other.

A broadcast reaches only the workers that are up: who *must* answer is said with ``expect``
(a count) or ``names`` (hostnames).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any

import celery
from celery import Celery
from celery.app.control import flatten_reply
from kombu.connection import Connection

from ..appinfo import registered_tasks
from ..policy import fingerprint
from ..spec.loader import Policies
from ..spec.matching import Matcher
from .explain import explain

#: The name of the inspect command every worker answers (``celery inspect policies``).
COMMAND = "policies"


def versions() -> dict[str, str]:
    """The versions a worker reports with its fingerprint."""
    return {"celery_policies": version("celery-policies"), "celery": celery.__version__}


#: Seconds to wait for the workers' answers (``celery inspect``'s default).
DEFAULT_TIMEOUT = 1.0

#: Statuses of one worker. Every status but ``OK`` fails the check.
OK = "ok"
DRIFT = "drift"
NO_POLICIES = "no policies"
ERROR = "error"
NO_MAJORITY = "no majority"


@dataclass(frozen=True)
class Answer:
    """One worker's answer to ``inspect policies``."""

    worker: str
    fingerprint: str | None = None
    file: str | None = None
    plugin_version: str | None = None
    celery_version: str | None = None
    loaded_at: str | None = None  # ISO 8601, UTC
    error: str | None = None

    @classmethod
    def from_reply(cls, worker: str, reply: Any) -> Answer:
        """Read a reply. A worker that lacks the command (celery-policies is not installed
        in it) or fails running it answers ``{"error": ...}`` (kombu's ``Node.dispatch``)."""
        if not isinstance(reply, dict) or "fingerprint" not in reply:
            error = reply.get("error") if isinstance(reply, dict) else None
            return cls(worker, error=str(error or f"unexpected answer {reply!r}"))
        return cls(worker, reply["fingerprint"], reply.get("file"),
                   reply.get("celery_policies"), reply.get("celery"), reply.get("loaded_at"))


@dataclass(frozen=True)
class Reference:
    """The fingerprint every worker should have (None: there is none) and where it comes
    from, in words; ``file`` when a policy file gives it."""

    fingerprint: str | None
    source: str
    file: str | None = None


@dataclass(frozen=True)
class WorkerStatus:
    answer: Answer
    status: str


def ask(app: Celery, timeout: float = DEFAULT_TIMEOUT, names: Sequence[str] = (),
        connection: Connection | None = None) -> list[Answer]:
    """Broadcast ``inspect policies`` and return the answers received within ``timeout``
    seconds, by worker name.

    ``Inspect`` has no public way to send a command it does not define (``_request`` is
    private), so this calls ``Control.broadcast`` as ``Inspect`` does. With ``names`` only
    those workers are asked, and the wait ends once all of them have answered (kombu limits
    the replies to the number of destinations). ``connection``: the broker connection to
    use (by default the app's). Broker errors propagate.
    """
    replies = app.control.broadcast(COMMAND, arguments={"tasks": False}, reply=True,
                                    timeout=timeout, destination=list(names) or None,
                                    connection=connection)
    by_worker: dict[str, Any] = flatten_reply(replies or [])
    return [Answer.from_reply(worker, reply) for worker, reply in sorted(by_worker.items())]


def file_reference(app: Celery, policies: Policies) -> Reference:
    """The fingerprint a worker of ``app`` reports once it has loaded ``policies``.

    The same function over the same names: ``Runtime.apply`` resolves ``registered_tasks``,
    the app's own tasks without Celery's ``celery.*`` ones, once the task modules are
    imported (as ``load_app`` does).
    """
    return Reference(fingerprint(explain(Matcher(policies), registered_tasks(app))),
                     policies.file, policies.file)


def majority(answers: Sequence[Answer]) -> Reference:
    """The fingerprint more workers share than any other; none on a tie. Workers without a
    fingerprint do not vote: they drift whatever the others say."""
    counts = Counter(a.fingerprint for a in answers if a.fingerprint is not None)
    if not counts:
        return Reference(None, "no worker has policies loaded")
    top = max(counts.values())
    leaders = sorted(fp for fp, count in counts.items() if count == top)
    if len(leaders) > 1:
        return Reference(None, f"no majority: {len(leaders)} fingerprints "
                               f"({', '.join(leaders)}) are each applied by {_workers(top)}")
    return Reference(leaders[0], f"the majority, {top} of {_workers(len(answers))}")


def status(answer: Answer, reference: Reference) -> str:
    if answer.error is not None:
        return ERROR
    if answer.fingerprint is None:
        return NO_POLICIES
    if reference.fingerprint is None:
        return NO_MAJORITY
    return OK if answer.fingerprint == reference.fingerprint else DRIFT


@dataclass(frozen=True)
class Fleet:
    """The verdict on the workers that answered, and on those that should have."""

    workers: tuple[WorkerStatus, ...]
    reference: Reference
    missing: tuple[str, ...]  # named workers that did not answer
    shortfall: int  # how many fewer workers answered than were expected
    timeout: float

    @property
    def drifting(self) -> list[WorkerStatus]:
        """Every worker whose status is not ``OK``."""
        return [w for w in self.workers if w.status != OK]

    @property
    def ok(self) -> bool:
        return bool(self.workers) and not (self.drifting or self.missing or self.shortfall)

    def summary(self) -> str:
        """One line: what agrees, or every reason the check fails, naming the workers."""
        if self.ok:
            count = len(self.workers)
            given = f" ({self.reference.file})" if self.reference.file else ""
            return (f"{count} of {_workers(count)} appl{'ies' if count == 1 else 'y'} "
                    f"fingerprint {self.reference.fingerprint}{given}")
        wait = f"within {self.timeout:g}s"
        if not self.workers:
            asked = f" ({', '.join(self.missing)})" if self.missing else ""
            return f"no worker answered {wait}{asked}"
        parts = []
        if self.drifting:
            bad = ", ".join(map(_named, self.drifting))
            reference = self.reference
            if reference.fingerprint is None:
                parts.append(f"{reference.source}: {bad}")
            else:
                parts.append(f"{len(self.drifting)} of {_workers(len(self.workers))} "
                             f"drift from fingerprint {reference.fingerprint} "
                             f"({reference.source}): {bad}")
        if self.missing:
            parts.append(f"did not answer {wait}: {', '.join(self.missing)}")
        if self.shortfall:
            parts.append(f"expected {_workers(len(self.workers) + self.shortfall)}, "
                         f"{len(self.workers)} answered {wait}")
        return "; ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "expected": {"fingerprint": self.reference.fingerprint,
                         "source": self.reference.source},
            "workers": [{"worker": w.answer.worker, "status": w.status,
                         "fingerprint": w.answer.fingerprint, "file": w.answer.file,
                         "celery_policies": w.answer.plugin_version,
                         "celery": w.answer.celery_version, "loaded_at": w.answer.loaded_at,
                         "error": w.answer.error} for w in self.workers],
            "missing": list(self.missing),
            "shortfall": self.shortfall,
            "timeout": self.timeout,
            "summary": self.summary(),
        }


def judge(answers: Iterable[Answer], reference: Reference | None = None, *,
          expect: int = 0, names: Sequence[str] = (),
          timeout: float = DEFAULT_TIMEOUT) -> Fleet:
    """Judge the answers against ``reference`` (from a file), else against the majority.

    ``expect``: at least this many workers must answer. ``names``: each of these must.
    """
    answers = sorted(answers, key=lambda a: a.worker)
    reference = reference or majority(answers)
    answered = {a.worker for a in answers}
    return Fleet(
        workers=tuple(WorkerStatus(a, status(a, reference)) for a in answers),
        reference=reference,
        missing=tuple(name for name in dict.fromkeys(names) if name not in answered),
        shortfall=max(0, expect - len(answers)),
        timeout=timeout,
    )


def _named(worker: WorkerStatus) -> str:
    """A worker's name, with its status when the fingerprint alone does not explain it."""
    if worker.status in (NO_POLICIES, ERROR):
        return f"{worker.answer.worker} ({worker.status})"
    return worker.answer.worker


def _workers(count: int) -> str:
    return f"{count} worker{'' if count == 1 else 's'}"
