"""Durations are parsed once, at the edge, into float seconds."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from celery_policies.spec.durations import (
    MAX_DURATION_SECONDS,
    format_duration,
    parse_duration,
    seconds_until,
)


@pytest.mark.parametrize(("text", "seconds"), [
    ("500ms", 0.5), ("30s", 30.0), ("5m", 300.0), ("2h", 7200.0), ("1d", 86400.0),
    ("1h30m", 5400.0), ("1.5s", 1.5), (" 10s ", 10.0), ("42", 42.0), (42, 42.0), (0.25, 0.25),
])
def test_accepts_units_and_plain_seconds(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["tenish", "5 minutes", "1x", "", "s", "1h-5m", "nan", "inf"])
def test_refuses_text_that_is_not_a_duration(text: str) -> None:
    with pytest.raises(ValueError, match="expected a duration like 30s or 5m"):
        parse_duration(text)


@pytest.mark.parametrize("value", [0, -1, "0s", "-5", 0.0])
def test_refuses_zero_and_negative(value: object) -> None:
    with pytest.raises(ValueError, match="more than zero"):
        parse_duration(value)


@pytest.mark.parametrize("value", [True, False, None, [1], {"s": 1}])
def test_refuses_other_types(value: object) -> None:
    with pytest.raises(ValueError, match="expected a duration"):
        parse_duration(value)


@given(st.integers(min_value=1, max_value=10**7))
def test_formatting_round_trips_whole_seconds(seconds: int) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize("value", ["99999999999d", 1e308, 10**400, "1" + "0" * 400, "366d",
                                   MAX_DURATION_SECONDS + 1])
def test_refuses_durations_above_the_upper_bound(value: object) -> None:
    """Above the bound a countdown overflowed datetime arithmetic at run time."""
    with pytest.raises(ValueError, match=r"a duration may be at most 365d \(31536000 seconds\)"):
        parse_duration(value)


def test_the_upper_bound_itself_is_accepted() -> None:
    assert parse_duration("365d") == MAX_DURATION_SECONDS == 365 * 86400.0


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan"), "-inf", "1e999"])
def test_refuses_infinity_and_nan_as_numbers(value: object) -> None:
    with pytest.raises(ValueError, match=r"expected a duration like|more than zero|at most 365d"):
        parse_duration(value)


def test_delays_come_from_countdowns_and_etas() -> None:
    assert seconds_until(2) == 2.0
    assert seconds_until(None) is None
    eta = datetime.now(timezone.utc) + timedelta(seconds=30)
    assert 29 < (seconds_until(eta.isoformat()) or 0) <= 30
    assert 29 < (seconds_until(eta.replace(tzinfo=None)) or 0) <= 30
