"""Which worker pools enforce which time limits.

Only prefork runs each task in a process the worker can signal (soft limit) and kill (hard
limit). gevent enforces the hard limit with ``gevent.Timeout`` but has no soft limit; eventlet,
threads and solo enforce neither (celery/concurrency/*.py; celery#1958, #9203, #8395). A limit
a pool ignores is silently never applied, so the worker says so at startup.
"""

from __future__ import annotations

from celery.concurrency import ALIASES

#: The time-limit keys each known pool enforces.
ENFORCED: dict[str, frozenset[str]] = {
    "prefork": frozenset({"time_limit", "soft_time_limit"}),
    "processes": frozenset({"time_limit", "soft_time_limit"}),
    "gevent": frozenset({"time_limit"}),
    "eventlet": frozenset(),
    "threads": frozenset(),
    "solo": frozenset(),
}
LIMIT_KEYS = ("time_limit", "soft_time_limit")


def pool_name(pool: object) -> str:
    """The alias (``prefork``, ``solo``...) of a pool given as an alias, a path or a class."""
    if isinstance(pool, str):
        if pool in ALIASES:
            return pool
        target = pool
    else:
        target = f"{getattr(pool, '__module__', '')}:{getattr(pool, '__qualname__', pool)}"
    # the first alias of a path is its usual name: 'prefork' comes before 'processes'
    return next((alias for alias, path in ALIASES.items() if path == target), target)


def unenforced(pool: str) -> tuple[str, ...]:
    """The time-limit keys ``pool`` does not enforce (none for an unknown, custom pool)."""
    enforced = ENFORCED.get(pool)
    if enforced is None:
        return ()
    return tuple(key for key in LIMIT_KEYS if key not in enforced)
