"""Human renderings of setting values."""

from __future__ import annotations

from typing import Any

from ..durations import format_duration
from ..explain import jsonable

_DURATION_KEYS = frozenset({"time_limit", "soft_time_limit", "retry_backoff_max",
                            "default_retry_delay", "retry_deadline", "retry_backoff"})


def human(key: str, value: Any, *, dead_letter_queue: str | None = None) -> str:
    """``value`` of setting ``key`` as a person reads it: 30s, not 30.0."""
    if value is None:
        return "-"
    if key in _DURATION_KEYS and isinstance(value, int | float) and not isinstance(value, bool):
        return format_duration(float(value))
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple | list) and key in ("autoretry_for", "dont_autoretry_for"):
        return ", ".join(value) if value else "(none)"
    if key == "on_failure":
        return "; ".join(_route(r, dead_letter_queue) for r in jsonable(value))
    if key == "retry_per_exception":
        return "; ".join(f"{exc}: " + ", ".join(f"{k}={human(k, v)}" for k, v in rule.items())
                         for exc, rule in jsonable(value).items())
    if key == "publish_retry_policy":
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
