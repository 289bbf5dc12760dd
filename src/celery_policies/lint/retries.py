"""Rules about retrying: what retrying cannot fix (CP107), retrying without end (CP108), and
backoff arithmetic that cannot do what it says (CP111-CP113).

The arithmetic is ``backoff.py``'s, the one the worker's retry wrapper and ``simulate`` use.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from ..spec.backoff import RetryRule, attributes, longest_countdown, retry_rule, schedule
from ..spec.durations import format_duration
from ..spec.exception_refs import without_builtins_prefix
from ..spec.model import RetryOverride
from ._core import Blame, Context, Hit, Subject, rule

#: Exception classes that bugs raise (or that catch them): the same failure comes back on
#: every attempt, so retrying only delays it.
PROGRAMMING_ERRORS = frozenset({"Exception", "BaseException", "LookupError", "KeyError",
                                "AttributeError", "TypeError", "NameError", "AssertionError"})
#: ``max_retries`` above this is not simulated for CP113 (one step per retry).
MAX_SIMULATED_RETRIES = 10_000


@dataclass(frozen=True)
class Plan:
    """One way a task retries: by its own rule, or by a ``retry_per_exception`` entry."""

    rule: RetryRule
    exception: str | None = None
    override: RetryOverride | None = None

    @property
    def label(self) -> str:
        return "" if self.exception is None else f" (for {self.exception})"


def plans(subject: Subject) -> list[Plan]:
    """The task's own retry rule, then one per ``retry_per_exception`` entry."""
    main = retry_rule(subject.value)
    entries = subject.value("retry_per_exception") or {}
    return [Plan(main), *(Plan(retry_rule(attributes(override), main), name, override)
                          for name, override in entries.items())]


def blame_plan(context: Context, subject: Subject, plan: Plan, *keys: str) -> Blame | None:
    """Where a problem of ``plan`` made by ``keys`` is reported. An entry of
    ``retry_per_exception`` is blamed at the first of ``keys`` it sets; one that sets none of
    them repeats the task's own rule, whose finding says it already (None)."""
    if plan.override is None:
        return context.blame(subject, *keys)
    for key in keys:
        if key in plan.override.model_fields_set:
            return context.blame_at(subject, "retry_per_exception", plan.exception or "", key)
    return None


def delay_keys(plan: Plan, longest: float | None = None) -> tuple[str, ...]:
    """The keys that make ``plan``'s delays; the one that sets a ``longest`` delay first."""
    if plan.rule.base is None:
        return ("default_retry_delay", "retry_backoff")
    if longest == plan.rule.cap:
        return ("retry_backoff_max", "retry_backoff", "max_retries")
    return ("retry_backoff", "max_retries", "retry_backoff_max")


def long_countdowns(context: Context, subject: Subject,
                    limit: float) -> Iterator[tuple[Blame, float, str]]:
    """The retry plans of a task that retries by itself whose longest countdown is above
    ``limit``: (where to report it, the countdown, the plan's label). Reported at the key
    that sets the longest delay (the cap, when it is reached)."""
    deadline = subject.value("retry_deadline")
    for plan in plans(subject):
        if plan.override is None and not subject.value("autoretry_for"):
            continue  # only retry_per_exception entries make it retry
        delay = longest_countdown(plan.rule, deadline)
        keys = delay_keys(plan, delay)
        blame = (context.blame(subject, *keys, ordered=True) if plan.override is None
                 else blame_plan(context, subject, plan, *keys))
        if delay > limit and blame is not None:
            yield blame, delay, plan.label


def _span(low: float, high: float) -> str:
    return format_duration(high) if low == high else (
        f"{format_duration(low)} to {format_duration(high)}")


@rule("CP107")
def broad_autoretry(context: Context) -> Iterator[Hit]:
    for subject in context.subjects:
        for index, name in enumerate(subject.value("autoretry_for") or ()):
            if without_builtins_prefix(name) in PROGRAMMING_ERRORS:
                yield Hit(context.blame_at(subject, "autoretry_for", index),
                          f"autoretry_for lists {name}", _broad_advice(name), subject.name)
        for name in subject.value("retry_per_exception") or {}:
            if without_builtins_prefix(name) in PROGRAMMING_ERRORS:
                yield Hit(context.blame_at(subject, "retry_per_exception", name),
                          f"retry_per_exception retries {name}", _broad_advice(name),
                          subject.name)


def _broad_advice(name: str) -> str:
    catches = ("it catches the errors bugs raise" if name.endswith("Exception")
               else "bugs raise it (a missing key or attribute, a wrong type, a failed assert)")
    return (f"{catches}, and such a failure comes back on every attempt: retrying only delays "
            "it and loads the broker; list the transient errors you expect instead "
            "(ConnectionError, TimeoutError, your client library's errors)")


@rule("CP108")
def unlimited_retries_without_deadline(context: Context) -> Iterator[Hit]:
    for subject in context.subjects:
        if subject.value("retry_deadline") is not None:
            continue
        for plan in plans(subject):
            blame = blame_plan(context, subject, plan, "max_retries", "retry_deadline")
            if plan.rule.max_retries is None and blame is not None:
                yield Hit(blame, f"max_retries is unlimited{plan.label} and there is no "
                          "retry_deadline",
                          "a task that keeps failing retries forever: its retries pile up on "
                          "the broker and its failure routes never run (celery#1875); add a "
                          "retry_deadline, or give max_retries a number", subject.name)


@rule("CP111")
def backoff_base_above_cap(context: Context) -> Iterator[Hit]:
    # Celery caps every delay at retry_backoff_max, 10 minutes unless set
    # (celery/utils/time.py get_exponential_backoff_interval).
    for subject in context.subjects:
        for plan in plans(subject):
            base, cap = plan.rule.base, plan.rule.cap
            blame = blame_plan(context, subject, plan, "retry_backoff", "retry_backoff_max")
            if base is not None and base > cap and blame is not None:
                yield Hit(blame, f"retry_backoff {format_duration(base)}{plan.label} is above "
                          f"retry_backoff_max {format_duration(cap)}",
                          f"every delay is cut to the cap, so there is no backoff: each retry "
                          f"waits {format_duration(cap)} at most; raise retry_backoff_max above "
                          "the base, or lower the base", subject.name)


def with_deadline(context: Context) -> Iterator[tuple[Subject, float, Plan]]:
    """Every retry plan of every task that has a ``retry_deadline``, with the deadline."""
    for subject in context.subjects:
        deadline = subject.value("retry_deadline")
        if deadline is not None:
            for plan in plans(subject):
                yield subject, deadline, plan


@rule("CP112")
def deadline_before_first_retry(context: Context) -> Iterator[Hit]:
    for subject, deadline, plan in with_deadline(context):
        low, high = plan.rule.bounds(0)
        blame = blame_plan(context, subject, plan, "retry_deadline", *delay_keys(plan))
        if plan.rule.max_retries == 0 or high <= deadline or blame is None:
            continue
        outcome = ("the task never retries: the deadline has passed before the first retry "
                   "would start" if low > deadline else "the first retry happens only when "
                   "jitter draws a delay under the deadline")
        yield Hit(blame, f"retry_deadline {format_duration(deadline)} is shorter than the "
                  f"first retry's delay{plan.label} ({_span(low, high)})",
                  f"{outcome}; lengthen retry_deadline or shorten the delay", subject.name)


@rule("CP113")
def max_retries_unreachable(context: Context) -> Iterator[Hit]:
    for subject, deadline, plan in with_deadline(context):
        wanted = plan.rule.max_retries
        blame = blame_plan(context, subject, plan, "max_retries", "retry_deadline",
                           *delay_keys(plan))
        if wanted is None or wanted > MAX_SIMULATED_RETRIES or blame is None:
            continue
        # simulate() stops at the deadline once even the shortest delays pass it
        last = schedule(plan.rule, deadline, wanted + 1)[-1]
        if last.outcome != "deadline" or last.attempt == 1:  # attempt 1: CP112 says it
            continue
        made = last.attempt - 1
        yield Hit(blame, f"max_retries {wanted}{plan.label} cannot be reached within "
                  f"retry_deadline {format_duration(deadline)}: even the shortest delays "
                  f"allow {made} retr{'y' if made == 1 else 'ies'}",
                  "the deadline always ends retrying first, so max_retries promises retries "
                  f"that never happen; lower max_retries to {made}, or lengthen "
                  "retry_deadline (celery-policies simulate shows the timeline)", subject.name)
