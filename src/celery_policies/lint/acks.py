"""Rules about acknowledgement: settings that only work with ``acks_late`` (CP104),
redelivering a task that kills its worker without end (CP105), and failures rejected with
nowhere to go (CP106).

Celery reads ``reject_on_worker_lost`` and ``acks_on_failure_or_timeout`` only for
``acks_late`` tasks (celery/worker/request.py ``on_failure`` and ``on_timeout``).
"""

from __future__ import annotations

from collections.abc import Iterator

from ..spec.values import UNLIMITED
from ._core import Context, Hit, rule

#: ``max_redeliveries`` above this lets a poison message kill worker processes for too long.
MAX_SAFE_REDELIVERIES = 10


@rule("CP104")
def reject_without_acks_late(context: Context) -> Iterator[Hit]:
    for subject in context.subjects:
        if subject.value("reject_on_worker_lost") and not subject.value("acks_late"):
            yield Hit(context.blame(subject, "reject_on_worker_lost", "acks_late"),
                      "reject_on_worker_lost is on but acks_late is off",
                      "the message was acknowledged when the task started, so there is "
                      "nothing to redeliver when its worker process dies: the setting does "
                      "nothing; set acks_late: true, or drop reject_on_worker_lost",
                      subject.name)


@rule("CP105")
def unbounded_redeliveries(context: Context) -> Iterator[Hit]:
    # celery#9082: a task that kills its process (out of memory, a crash in C code) is
    # redelivered and kills the next one; requeues do not count as retries.
    for subject in context.subjects:
        cap = subject.value("max_redeliveries")
        if not (subject.value("acks_late") and subject.value("reject_on_worker_lost")):
            continue
        if cap == UNLIMITED or (isinstance(cap, int) and cap > MAX_SAFE_REDELIVERIES):
            yield Hit(context.blame(subject, "max_redeliveries", "reject_on_worker_lost"),
                      f"reject_on_worker_lost with max_redeliveries {cap}",
                      "a message that kills its worker process (out of memory, a crash in C "
                      "code) is redelivered and kills the next one, again and again, taking "
                      "worker processes from every other task (celery#9082); keep "
                      f"max_redeliveries at {MAX_SAFE_REDELIVERIES} or below (3 unless set)",
                      subject.name)


@rule("CP106")
def acks_on_failure_disabled(context: Context) -> Iterator[Hit]:
    # celery#4797: with acks_on_failure_or_timeout off, Celery rejects a failed message
    # without requeue, and requeues one that hit its hard time limit.
    for subject in context.subjects:
        if not subject.value("acks_late") or subject.value("acks_on_failure_or_timeout"):
            continue
        routes = subject.value("on_failure") or ()
        problems = []
        if not any(r.dead_letter is not None and r.when is None for r in routes):
            problems.append((
                "no dead-letter route takes every failure",
                "a failed task's message is rejected without requeue: Redis deletes it and "
                "RabbitMQ drops it unless the queue has a dead-letter exchange"))
        if subject.value("time_limit") is not None:
            problems.append((
                "the task has a hard time_limit",
                "a task killed by its hard time limit is requeued, runs again and is killed "
                "again, forever (a dead-letter route does not stop that: the task never fails "
                "for good)"))
        if problems:
            yield Hit(context.blame(subject, "acks_on_failure_or_timeout", "acks_late"),
                      "acks_on_failure_or_timeout is off"
                      + "".join(f", {what}" for what, _ in problems),
                      "; ".join(why for _, why in problems) + " (celery#4797); set "
                      "acks_on_failure_or_timeout: true, with a dead-letter route "
                      "(`on_failure: [{dead_letter: true}]`) to keep failed messages",
                      subject.name)
