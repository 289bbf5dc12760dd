"""Durations: ``500ms``, ``30s``, ``5m``, ``2h``, ``1d``, ``1h30m`` or a plain number of seconds.

Everything inside celery-policies works in float seconds; strings are parsed once, here.
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timezone

#: Seconds per unit suffix.
UNITS: dict[str, float] = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_WHOLE = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+")
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")

#: The pattern a duration string must match (also used in the JSON Schema).
DURATION_PATTERN = r"^\s*(?:\d+(?:\.\d+)?|(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+)\s*$"

EXPECTED = "expected a duration like 30s or 5m"

#: The longest duration a policy file may give, in seconds: 365 days. Every duration ends up in
#: a countdown, a time limit, a deadline or a timer. Celery turns a countdown into an ETA with
#: ``now + timedelta(seconds=countdown)`` (``Task.retry`` -> ``apply_async``), which raises
#: OverflowError past the year 9999 (about 2.5e11 s from now); ``threading`` waits refuse more
#: than ``threading.TIMEOUT_MAX`` (about 292 years on 64-bit Linux). A year is far below both,
#: and far above any retry delay, time limit or deadline that means something for a task.
MAX_DURATION_SECONDS = 365 * 86400.0


class DurationTooLong(ValueError):
    """A duration above ``MAX_DURATION_SECONDS``: kept apart so callers that word their own
    "expected ..." message still say what the limit is."""


def parse_duration(value: object) -> float:
    """Return ``value`` in seconds; raise ``ValueError`` with a readable message otherwise.

    Zero, negative, not-a-number and boolean values are refused: a duration of nothing is always
    a mistake in a policy file (write ``null`` or leave the key out instead). So is anything
    longer than ``MAX_DURATION_SECONDS``, infinity included.
    """
    if isinstance(value, bool) or value is None:
        raise ValueError(f"{EXPECTED}, got {value!r}")
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:  # an int beyond ~1.8e308: too long (or too negative) by far
            seconds = math.inf if value > 0 else -math.inf
    elif isinstance(value, str):
        text = value.strip().replace(" ", "")
        if _NUMBER.fullmatch(text):
            seconds = float(text)
        elif _WHOLE.fullmatch(text.lstrip("-")):
            sign = -1.0 if text.startswith("-") else 1.0
            seconds = sign * sum(float(n) * UNITS[u] for n, u in _PART.findall(text))
        else:
            raise ValueError(f"{EXPECTED}, got {value!r}")
    else:
        raise ValueError(f"{EXPECTED}, got {type(value).__name__}")
    if math.isnan(seconds):
        raise ValueError(f"{EXPECTED}, got {_shown(value)}")
    if seconds <= 0:
        raise ValueError(f"a duration must be more than zero, got {_shown(value)}")
    if seconds > MAX_DURATION_SECONDS:
        raise DurationTooLong(f"a duration may be at most {format_duration(MAX_DURATION_SECONDS)} "
                              f"({MAX_DURATION_SECONDS:.0f} seconds), got {_shown(value)}")
    return seconds


def _shown(value: object, limit: int = 40) -> str:
    """``repr(value)``, cut short: a 400-digit number is not worth repeating in full."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}..."


def format_duration(seconds: float) -> str:
    """Render seconds compactly for humans: ``0.5s``, ``30s``, ``5m``, ``1h30m``."""
    if seconds < 60:
        return f"{seconds:.3g}s" if seconds < 10 else f"{seconds:.0f}s"
    out = []
    rest = round(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, rest = divmod(rest, size)
        if count:
            out.append(f"{count}{unit}")
    return "".join(out)


def seconds_until(when: object) -> float | None:
    """Seconds until ``when``: a countdown, a datetime or an ISO 8601 ETA, as a retry's
    ``Retry.when`` or a message's ``eta`` header gives it; None for anything else."""
    if isinstance(when, int | float):
        return float(when)  # a countdown
    eta = datetime.fromisoformat(when) if isinstance(when, str) else when
    if not isinstance(eta, datetime):
        return None
    if eta.tzinfo is None:
        eta = eta.replace(tzinfo=timezone.utc)
    return max(0.0, (eta - datetime.now(timezone.utc)).total_seconds())
