"""Rules about time limits: limits the worker's pool does not enforce (CP103) and a soft
limit the hard one pre-empts (CP117)."""

from __future__ import annotations

from collections.abc import Iterator

from ..spec.durations import format_duration
from ._core import Context, Hit, rule
from .pools import unenforced


@rule("CP103", needs="pool")
def pool_ignores_time_limit(context: Context) -> Iterator[Hit]:
    # Only prefork can signal and kill the process running a task; gevent has a hard limit
    # only; threads, solo and eventlet none (celery#1958, #9203, #8395; pools.py).
    pool = context.pool or ""
    for key in unenforced(pool):
        for subject in context.subjects:
            value = subject.value(key)
            if value is not None:
                yield Hit(context.blame(subject, key),
                          f"the {pool} pool does not enforce {key} {format_duration(value)}",
                          "the limit is silently never applied: only prefork enforces both "
                          "limits, gevent time_limit only (celery#1958, #9203, #8395); run "
                          "these tasks on a prefork worker, or do not rely on the limit",
                          subject.name)


@rule("CP117")
def soft_limit_not_below_hard(context: Context) -> Iterator[Hit]:
    # Each layer of the file refuses soft >= hard on its own; layers merged can still make it.
    for subject in context.subjects:
        soft, hard = subject.settings["soft_time_limit"], subject.settings["time_limit"]
        if soft.value is None or hard.value is None or soft.value < hard.value:
            continue
        yield Hit(context.blame(subject, "soft_time_limit", "time_limit"),
                  f"soft_time_limit {format_duration(soft.value)} from {soft.source} is not "
                  f"below time_limit {format_duration(hard.value)} from {hard.source}",
                  "the hard limit kills the task before the soft one can raise "
                  "SoftTimeLimitExceeded, so the task never gets to clean up; keep "
                  "soft_time_limit below time_limit", subject.name)
