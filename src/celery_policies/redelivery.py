"""``RedeliveriesExhausted``: the exception of a task that lost its worker process once more
after ``max_redeliveries`` redeliveries (``worker/redeliveries.py`` does the counting).

Its dotted name, ``celery_policies.redelivery.RedeliveriesExhausted``, is recorded in dead
letters, Sentry events and result backends: it never moves.
"""

from __future__ import annotations

from .errors import PolicyError


class RedeliveriesExhausted(PolicyError):
    """A task's worker process died once more after ``max_redeliveries`` redeliveries."""
