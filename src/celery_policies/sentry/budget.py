"""``max_events_per_minute``: a per-fingerprint budget of Sentry events, shared by a worker's
processes.

Failures are reported where they happen, mostly in prefork pool children; a budget kept in
each child would let a worker with ``-c 8`` send eight times the limit. So the counters live
in a small table of shared memory that the worker's main process creates before the pool
forks, and every child updates it under one lock.

A child killed while it holds the lock (SIGKILL, OOM) would leave it held for good: the lock
is only ever waited for briefly, and a process that cannot get it sends its event anyway.
Reporting must never stall a task, and worker shutdown never waits for the lock longer than
``SHUTDOWN_LOCK_WAIT``.

The same table counts what became of each event the plugin built (``OUTCOMES``) for the
worker's metrics, which its main process reads at each scrape: the children need no metrics
of their own.
"""

from __future__ import annotations

import ctypes
import hashlib
import multiprocessing
from collections.abc import Sequence

#: The length of one counting window, in seconds.
WINDOW = 60.0
#: Distinct fingerprints counted at once; beyond that the stalest window is reused.
SLOTS = 1024
#: How long a process waits for the table's lock before sending without counting, in seconds.
LOCK_WAIT = 0.05
#: How long worker shutdown waits for the lock to say how many events were held back, in
#: seconds; after it the count is read without the lock (a best-effort figure).
SHUTDOWN_LOCK_WAIT = 1.0
_PROBES = 16
#: What became of an event: sent (handed to sentry_sdk's transport), held back by the budget
#: (``over_budget``), or dropped (a ``before_send`` hook or sentry_sdk discarded it). The
#: same as ``metrics/names.py``'s ``SENTRY_OUTCOMES`` (a test checks: the layers keep
#: ``sentry/`` from importing ``metrics/``).
OUTCOMES = ("sent", "over_budget", "dropped")


class _Slot(ctypes.Structure):
    _fields_ = [("key", ctypes.c_uint64), ("start", ctypes.c_double),
                ("sent", ctypes.c_int64), ("suppressed", ctypes.c_int64)]


def _key(fingerprint: Sequence[str]) -> int:
    """A stable 64-bit key, never 0 (an empty slot): ``hash()`` differs between processes."""
    digest = hashlib.blake2b("\0".join(fingerprint).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") or 1


class EventBudget:
    """At most ``per_minute`` events per fingerprint in each window of ``WINDOW`` seconds
    (the window starts with the first event of the fingerprint); the rest are counted."""

    def __init__(self, per_minute: int, slots: int = SLOTS) -> None:
        self.per_minute = per_minute
        self._lock = multiprocessing.Lock()
        self._slots = multiprocessing.RawArray(_Slot, slots)
        self._outcomes = multiprocessing.RawArray(ctypes.c_int64, len(OUTCOMES))

    def admit(self, fingerprint: Sequence[str], now: float) -> int | None:
        """None if the event is over budget (it is counted); otherwise how many events of this
        fingerprint were held back since the last one sent, for this one to say so."""
        if not self._lock.acquire(timeout=LOCK_WAIT):
            return 0
        try:
            slot = self._slot(_key(fingerprint), now)
            if now - slot.start >= WINDOW:
                slot.start, slot.sent = now, 0
            if slot.sent >= self.per_minute:
                slot.suppressed += 1
                self._outcomes[OUTCOMES.index("over_budget")] += 1
                return None
            slot.sent += 1
            held, slot.suppressed = slot.suppressed, 0
            return int(held)
        finally:
            self._lock.release()

    def count(self, outcome: str) -> None:
        """Count an event's ``outcome`` (one of ``OUTCOMES``). Without the lock (a process
        died holding it) the count is made anyway: a rare lost increment, never a stall."""
        index = OUTCOMES.index(outcome)
        locked = self._lock.acquire(timeout=LOCK_WAIT)
        try:
            self._outcomes[index] += 1
        finally:
            if locked:
                self._lock.release()

    def outcomes(self) -> dict[str, int]:
        """The events counted so far in every process of the worker, by outcome (read
        without the lock: each count is one machine word)."""
        return {outcome: int(self._outcomes[i]) for i, outcome in enumerate(OUTCOMES)}

    def held_back(self, wait: float = SHUTDOWN_LOCK_WAIT) -> int:
        """Events counted and not yet reported by a later event, over all fingerprints.

        Read at worker shutdown, which must finish even when a pool process died holding
        the lock: after ``wait`` seconds the counters are read without it."""
        locked = self._lock.acquire(timeout=wait)
        try:
            return sum(int(slot.suppressed) for slot in self._slots)
        finally:
            if locked:
                self._lock.release()

    def _slot(self, key: int, now: float) -> _Slot:
        size = len(self._slots)
        stalest: _Slot | None = None
        for probe in range(_PROBES):
            slot = self._slots[(key + probe) % size]
            if slot.key == key:
                return slot
            if slot.key == 0:
                slot.key, slot.start, slot.sent, slot.suppressed = key, now, 0, 0
                return slot
            if stalest is None or slot.start < stalest.start:
                stalest = slot
        assert stalest is not None
        stalest.key, stalest.start, stalest.sent, stalest.suppressed = key, now, 0, 0
        return stalest
