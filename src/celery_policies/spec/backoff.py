"""Retry arithmetic, shared by the worker's retry wrapper and ``simulate`` (one implementation).

delay = min(retry_backoff_max, retry_backoff * 2**retries), then jitter:
``full`` draws uniformly in [0, delay], ``equal`` in [delay/2, delay], ``none`` keeps delay.
Unlike Celery's ``get_exponential_backoff_interval`` (celery/utils/time.py) nothing is
truncated to whole seconds, so a 500ms base means 500ms.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

from .exception_refs import mro_distance, resolve_refs
from .values import UNLIMITED

# Celery's own defaults (celery/app/task.py), used where neither the file nor the task sets a key.
#: Task.max_retries
CELERY_MAX_RETRIES = 3
#: Task.default_retry_delay, seconds: the delay when retry_backoff is off.
CELERY_DEFAULT_RETRY_DELAY = 180.0
#: Task.retry_backoff_max, seconds.
CELERY_RETRY_BACKOFF_MAX = 600.0
#: Task.retry_jitter is True, i.e. full jitter.
CELERY_RETRY_JITTER = "full"

ExceptionRef = type[BaseException] | str
GiveUpReason = Literal["not_retryable", "max_retries", "deadline"]


@dataclass(frozen=True)
class RetryRule:
    """How one kind of failure retries.

    ``max_retries`` None means no limit; ``base`` None means no backoff (``fixed_delay`` each
    time). Seconds throughout.
    """

    max_retries: int | None
    base: float | None
    cap: float
    jitter: str
    fixed_delay: float

    def bounds(self, retries: int) -> tuple[float, float]:
        """The range the delay before retry number ``retries + 1`` is drawn from, in seconds."""
        if self.base is None:
            return (self.fixed_delay, self.fixed_delay)
        # min() first keeps 2**retries from overflowing float for unlimited retries
        delay = self.cap if retries >= 1024 else min(self.cap, self.base * 2.0**retries)
        if self.jitter == "full":
            return (0.0, delay)
        if self.jitter == "equal":
            return (delay / 2, delay)
        return (delay, delay)


@dataclass(frozen=True)
class Retry:
    countdown: float


@dataclass(frozen=True)
class GiveUp:
    reason: GiveUpReason


#: The rule of a task that sets nothing: Celery's defaults.
CELERY_RULE = RetryRule(CELERY_MAX_RETRIES, None, CELERY_RETRY_BACKOFF_MAX, CELERY_RETRY_JITTER,
                        CELERY_DEFAULT_RETRY_DELAY)


def retry_rule(get: Callable[[str], Any], parent: RetryRule = CELERY_RULE) -> RetryRule:
    """A rule from effective values; a key that is ``None`` keeps ``parent``'s value."""
    max_retries = get("max_retries")
    backoff = get("retry_backoff")
    cap = get("retry_backoff_max")
    jitter = get("retry_jitter")
    fixed = get("default_retry_delay")
    return RetryRule(
        max_retries=parent.max_retries if max_retries is None else (
            None if max_retries == UNLIMITED else int(max_retries)),
        base=parent.base if backoff is None else (None if backoff is False else float(backoff)),
        cap=parent.cap if cap is None else float(cap),
        jitter=parent.jitter if jitter is None else str(jitter),
        fixed_delay=parent.fixed_delay if fixed is None else float(fixed),
    )


def attributes(obj: object) -> Callable[[str], Any]:
    """A ``get(key)`` over an object's attributes (a ``retry_per_exception`` entry)."""
    return lambda key: getattr(obj, key, None)


@dataclass(frozen=True)
class RetrySettings:
    """The effective retry settings of one task, with exception classes already resolved."""

    autoretry_for: tuple[ExceptionRef, ...]
    dont_autoretry_for: tuple[ExceptionRef, ...]
    rule: RetryRule
    per_exception: tuple[tuple[ExceptionRef, RetryRule], ...]
    deadline: float | None

    @classmethod
    def from_values(cls, get: Callable[[str], Any],
                    resolve: Callable[[Iterable[str]], tuple[ExceptionRef, ...]] = resolve_refs,
                    ) -> RetrySettings:
        """Build from a lookup of effective values (``None`` for unset: Celery's default).

        Exception names are imported here, once (``resolve``); a name that cannot be imported
        is kept and matched by name.
        """
        rule = retry_rule(get)
        per_exception = get("retry_per_exception") or {}
        refs = resolve(per_exception)
        return cls(
            autoretry_for=resolve(get("autoretry_for") or ()),
            dont_autoretry_for=resolve(get("dont_autoretry_for") or ()),
            rule=rule,
            per_exception=tuple(
                (ref, retry_rule(attributes(override), rule))
                for ref, override in zip(refs, per_exception.values(), strict=True)
            ),
            deadline=get("retry_deadline"),
        )

    def rule_for(self, exc_type: type[BaseException]) -> RetryRule | None:
        """The rule ``exc_type`` retries under, or None when it does not retry.

        An exception retries when ``autoretry_for`` or ``retry_per_exception`` names it or a
        base class, unless ``dont_autoretry_for`` does. The most specific (nearest in the MRO)
        ``retry_per_exception`` entry wins.
        """
        if mro_distance(exc_type, self.dont_autoretry_for) is not None:
            return None
        best: tuple[int, RetryRule] | None = None
        for ref, rule in self.per_exception:
            distance = mro_distance(exc_type, (ref,))
            if distance is not None and (best is None or distance < best[0]):
                best = (distance, rule)
        if best is not None:
            return best[1]
        return self.rule if mro_distance(exc_type, self.autoretry_for) is not None else None

    def decide(self, exc_type: type[BaseException], retries: int, elapsed: float,
               rng: random.Random | None = None) -> Retry | GiveUp:
        """Whether a task that raised ``exc_type`` after ``retries`` retries and ``elapsed``
        seconds since its first attempt started retries, and after how long."""
        draw = (rng or random).uniform
        after = after_failure(self.rule_for(exc_type), retries, elapsed, self.deadline, draw)
        return after if isinstance(after, GiveUp) else Retry(after[0])


def after_failure(rule: RetryRule | None, retries: int, elapsed: float, deadline: float | None,
                  draw: Callable[[float, float], float] | None = None,
                  ) -> GiveUp | tuple[float, float]:
    """What follows a failed attempt, in the one order the worker and ``simulate`` share: give
    up when the failure does not retry (``rule`` None), then when ``retries`` has reached
    ``max_retries``, then when the next attempt would start after ``deadline``; else retry,
    after a delay returned as its (shortest, longest) range in seconds.

    ``elapsed`` is seconds from the first attempt's start to this failure. With ``draw`` the
    delay is one value drawn from the rule's bounds (the worker: shortest and longest are that
    value); without, it is the whole range (``simulate``: it gives up on the deadline only when
    even the shortest delay passes it).
    """
    if rule is None:
        return GiveUp("not_retryable")
    if rule.max_retries is not None and retries >= rule.max_retries:
        return GiveUp("max_retries")
    shortest, longest = rule.bounds(retries)
    if draw is not None:
        shortest = longest = draw(shortest, longest)
    if deadline is not None and elapsed + shortest > deadline:
        return GiveUp("deadline")
    return shortest, longest


@dataclass(frozen=True)
class Step:
    """One attempt in a simulated timeline. Times are seconds after the first attempt starts.

    ``outcome`` is ``retry``, ``maybe`` (retries or stops at the deadline, depending on jitter)
    or a ``GiveUpReason``.
    """

    attempt: int
    start: tuple[float, float]
    outcome: str
    delay: tuple[float, float] | None


def simulate(settings: RetrySettings, exc_type: type[BaseException],
             attempts: int) -> list[Step]:
    """The timeline of a task that raises ``exc_type`` every time, assuming instant failures.

    Stops when every path has given up, or after ``attempts`` attempts.
    """
    steps: list[Step] = []
    rule = settings.rule_for(exc_type)
    low_start = high_start = 0.0
    for retries in range(attempts):
        start = (low_start, high_start)
        after = after_failure(rule, retries, low_start, settings.deadline)
        if isinstance(after, GiveUp):
            steps.append(Step(retries + 1, start, after.reason, None))
            break
        low, high = after
        # the shortest delay keeps within the deadline, the longest may not: the draw decides
        maybe = settings.deadline is not None and high_start + high > settings.deadline
        steps.append(Step(retries + 1, start, "maybe" if maybe else "retry", (low, high)))
        low_start += low
        high_start += high
        if settings.deadline is not None:
            high_start = min(high_start, settings.deadline)
    return steps


def schedule(rule: RetryRule, deadline: float | None, attempts: int) -> list[Step]:
    """``simulate`` for a failure that ``rule`` always retries, whatever its class."""
    settings = RetrySettings((BaseException,), (), rule, (), deadline)
    return simulate(settings, BaseException, attempts)


def longest_countdown(rule: RetryRule, deadline: float | None) -> float:
    """The longest delay ``rule`` can put before one retry (0 when it never retries): what a
    broker may have to hold as a message with an ETA.

    Delays only grow with the retry number, so the last retry's is the longest; a retry whose
    countdown would pass ``deadline`` is not made, so none exceeds it.
    """
    if rule.max_retries == 0:
        return 0.0
    # from 1024 retries on, bounds() gives the cap itself
    last = 1024 if rule.max_retries is None else min(rule.max_retries - 1, 1024)
    longest = rule.bounds(last)[1]
    return longest if deadline is None else min(longest, deadline)
