"""Durations: ``500ms``, ``30s``, ``5m``, ``2h``, ``1d``, ``1h30m`` or a plain number of seconds.

Everything inside celery-policies works in float seconds; strings are parsed once, here.
"""

from __future__ import annotations

import math
import re

#: Seconds per unit suffix.
UNITS: dict[str, float] = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_WHOLE = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+")
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")

#: The pattern a duration string must match (also used in the JSON Schema).
DURATION_PATTERN = r"^\s*(?:\d+(?:\.\d+)?|(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+)\s*$"

EXPECTED = "expected a duration like 30s or 5m"


def parse_duration(value: object) -> float:
    """Return ``value`` in seconds; raise ``ValueError`` with a readable message otherwise.

    Zero, negative, infinite and boolean values are refused: a duration of nothing is always a
    mistake in a policy file (write ``null`` or leave the key out instead).
    """
    if isinstance(value, bool) or value is None:
        raise ValueError(f"{EXPECTED}, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
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
    if not math.isfinite(seconds):
        raise ValueError(f"{EXPECTED}, got {value!r}")
    if seconds <= 0:
        raise ValueError(f"a duration must be more than zero, got {value!r}")
    return seconds


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
