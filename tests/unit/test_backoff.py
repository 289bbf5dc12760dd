"""The retry arithmetic shared by the worker and simulate."""

from __future__ import annotations

import random

import pytest

from celery_policies.spec.backoff import (
    CELERY_DEFAULT_RETRY_DELAY,
    GiveUp,
    Retry,
    RetryRule,
    RetrySettings,
    simulate,
)
from celery_policies.spec.matching import Matcher
from tests.conftest import load


def settings_for(text: str, task: str = "t") -> RetrySettings:
    resolved = Matcher(load(text)).resolve(task)
    return RetrySettings.from_values(resolved.get)


@pytest.mark.parametrize(("jitter", "retries", "bounds"), [
    ("none", 0, (2.0, 2.0)), ("none", 3, (16.0, 16.0)), ("none", 10, (60.0, 60.0)),
    ("full", 2, (0.0, 8.0)), ("equal", 2, (4.0, 8.0)), ("equal", 50, (30.0, 60.0)),
])
def test_delay_is_min_of_cap_and_base_times_two_to_the_retries(
        jitter: str, retries: int, bounds: tuple[float, float]) -> None:
    rule = RetryRule(max_retries=None, base=2.0, cap=60.0, jitter=jitter, fixed_delay=180.0)
    assert rule.bounds(retries) == bounds


def test_huge_retry_counts_do_not_overflow() -> None:
    rule = RetryRule(max_retries=None, base=1.0, cap=600.0, jitter="none", fixed_delay=1.0)
    assert rule.bounds(100_000) == (600.0, 600.0)


def test_sub_second_base_is_not_truncated() -> None:
    """Celery int()-truncates the backoff factor; a 500ms base here means 500ms."""
    settings = settings_for("version: 1\ndefaults: {retry_backoff: 500ms, retry_jitter: none}\n")
    assert settings.rule.bounds(0) == (0.5, 0.5)


def test_without_backoff_the_default_retry_delay_applies() -> None:
    settings = settings_for("version: 1\ndefaults: {autoretry_for: [OSError]}\n")
    assert settings.rule.bounds(4) == (CELERY_DEFAULT_RETRY_DELAY, CELERY_DEFAULT_RETRY_DELAY)


def test_unlisted_and_excluded_exceptions_do_not_retry() -> None:
    settings = settings_for("""
        version: 1
        defaults:
          autoretry_for: [OSError]
          dont_autoretry_for: [FileNotFoundError]
    """)
    assert settings.rule_for(ConnectionError) is settings.rule  # subclass of OSError
    assert settings.rule_for(FileNotFoundError) is None
    assert settings.rule_for(ValueError) is None


def test_most_specific_per_exception_rule_wins_and_inherits_the_rest() -> None:
    settings = settings_for("""
        version: 1
        defaults:
          autoretry_for: [OSError]
          max_retries: 5
          retry_backoff: 1s
          retry_per_exception:
            OSError: {max_retries: 1}
            ConnectionError: {retry_backoff: 1m, retry_backoff_max: 10m}
    """)
    reset = settings.rule_for(ConnectionResetError)  # ConnectionError is nearer than OSError
    assert reset is not None
    assert (reset.max_retries, reset.base, reset.cap) == (5, 60.0, 600.0)
    disk = settings.rule_for(PermissionError)
    assert disk is not None
    assert (disk.max_retries, disk.base) == (1, 1.0)


def test_per_exception_entries_retry_even_when_not_in_autoretry_for() -> None:
    settings = settings_for("""
        version: 1
        defaults:
          retry_per_exception:
            TimeoutError: {max_retries: 2}
    """)
    assert settings.rule_for(TimeoutError) is not None
    assert settings.rule_for(ValueError) is None


def test_decide_stops_at_max_retries() -> None:
    settings = settings_for("version: 1\ndefaults: {autoretry_for: [OSError], max_retries: 2}\n")
    assert isinstance(settings.decide(OSError, 1, 0.0), Retry)
    assert settings.decide(OSError, 2, 0.0) == GiveUp("max_retries")


def test_unlimited_retries_never_stop_on_count() -> None:
    settings = settings_for(
        "version: 1\ndefaults: {autoretry_for: [OSError], max_retries: unlimited}\n")
    assert isinstance(settings.decide(OSError, 10_000, 0.0), Retry)


def test_decide_stops_when_the_next_attempt_would_start_after_the_deadline() -> None:
    settings = settings_for("""
        version: 1
        defaults:
          autoretry_for: [OSError]
          max_retries: unlimited
          retry_backoff: 10s
          retry_jitter: none
          retry_deadline: 1m
    """)
    assert settings.decide(OSError, 0, 49.0) == Retry(10.0)
    assert settings.decide(OSError, 0, 51.0) == GiveUp("deadline")


def test_decide_draws_inside_the_jitter_bounds() -> None:
    settings = settings_for("""
        version: 1
        defaults: {autoretry_for: [OSError], retry_backoff: 4s, retry_jitter: equal,
                   max_retries: 10}
    """)
    rng = random.Random(7)
    for retries in range(8):
        decision = settings.decide(OSError, retries, 0.0, rng)
        low, high = settings.rule.bounds(retries)
        assert isinstance(decision, Retry)
        assert low <= decision.countdown <= high


def test_simulate_accumulates_ranges_and_stops_at_max_retries() -> None:
    settings = settings_for("""
        version: 1
        defaults: {autoretry_for: [OSError], retry_backoff: 1s, retry_jitter: full,
                   max_retries: 3}
    """)
    steps = simulate(settings, OSError, attempts=20)
    assert [s.outcome for s in steps] == ["retry", "retry", "retry", "max_retries"]
    assert [s.delay for s in steps] == [(0.0, 1.0), (0.0, 2.0), (0.0, 4.0), None]
    assert [s.start for s in steps] == [(0.0, 0.0), (0.0, 1.0), (0.0, 3.0), (0.0, 7.0)]


def test_simulate_marks_attempts_the_deadline_may_or_will_stop() -> None:
    settings = settings_for("""
        version: 1
        defaults: {autoretry_for: [OSError], retry_backoff: 10s, retry_jitter: equal,
                   max_retries: unlimited, retry_deadline: 40s}
    """)
    steps = simulate(settings, OSError, attempts=20)
    # delays 5-10, 10-20, 20-40: starts 0, 5-10, 15-30, then 35-40 (capped at the deadline)
    assert [s.outcome for s in steps] == ["retry", "retry", "maybe", "deadline"]
    assert steps[-1].start == (35.0, 40.0)


def test_simulate_of_a_non_retryable_error_is_one_attempt() -> None:
    settings = settings_for("version: 1\ndefaults: {autoretry_for: [OSError]}\n")
    assert [s.outcome for s in simulate(settings, KeyError, attempts=5)] == ["not_retryable"]
