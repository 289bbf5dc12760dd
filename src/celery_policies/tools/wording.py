"""Settings and timelines in words, as every human-facing view says them (the commands and the
console): 30s, not 30.0."""

from __future__ import annotations

from typing import Any

from ..policy import jsonable
from ..spec.durations import format_duration
from ..spec.settings import SETTINGS

#: What each attempt of a ``simulate`` timeline comes to (``spec/backoff.py``'s outcomes).
OUTCOMES = {
    "retry": "fails, retries",
    "maybe": "fails, retries unless the deadline passes first (depends on jitter)",
    "not_retryable": "fails: not retryable, gives up",
    "max_retries": "fails: max_retries reached, gives up",
    "deadline": "fails: next attempt would start after retry_deadline, gives up",
}


def human(key: str, value: Any, *, dead_letter_queue: str | None = None) -> str:
    """``value`` of setting ``key`` as a person reads it: 30s, not 30.0."""
    if value is None:
        return "-"
    info = SETTINGS.get(key)
    kind, unit = (info.kind, info.unit) if info is not None else (None, None)
    if unit == "seconds" and isinstance(value, int | float) and not isinstance(value, bool):
        return format_duration(float(value))
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple | list) and kind == "exceptions":
        return ", ".join(value) if value else "(none)"
    if kind == "routes":
        return "; ".join(_route(r, dead_letter_queue) for r in jsonable(value))
    if kind == "overrides":
        return "; ".join(f"{exc}: " + ", ".join(f"{k}={human(k, v)}" for k, v in rule.items())
                         for exc, rule in jsonable(value).items())
    if kind == "mapping":
        return ", ".join(f"{k}={v}" for k, v in jsonable(value).items())
    return str(value)


def _route(route: dict[str, Any], default_queue: str | None) -> str:
    if "dead_letter" in route:
        queue = default_queue if route["dead_letter"] is True else route["dead_letter"]
        target = f"dead letter to {queue}" if queue else "dead letter"
    else:
        target = f"task {route['task']}"
    return target + (f" when {', '.join(route['when'])}" if route.get("when") else "")


def delay_range(bounds: tuple[float, float]) -> str:
    low, high = bounds
    if low == high:
        return format_duration(low) if low else "0s"
    return f"{format_duration(low) if low else '0s'} - {format_duration(high)}"
