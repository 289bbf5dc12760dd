"""Human renderings of setting values."""

from __future__ import annotations

import unicodedata
from typing import Any

from rich.text import Text

from ..policy import jsonable
from ..spec.durations import format_duration
from ..spec.settings import SETTINGS

#: Characters shown escaped besides the control characters (C0, DEL, C1): the bidirectional
#: overrides and isolates, which reorder what follows them on screen, and the Unicode line
#: and paragraph separators.
_HIDDEN = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u2028\u2029")


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


def printable(text: str, *, lines: bool = False) -> str:
    """``text`` safe to print on a terminal: every control character (C0, DEL, C1) and every
    character that reorders or breaks what follows is shown as its Python escape (``\\x1b``),
    so that data read from a broker can never drive the terminal. ``lines`` keeps line feeds
    and tabs, for multi-line text such as a traceback."""
    return "".join(_escape(char) if _hides(char, lines) else char for char in text)


def cell(value: Any) -> Text:
    """A table cell showing ``value`` as plain text: escaped, and never read as rich markup
    (a plain ``str`` cell would be: ``[bold]`` in a task name would restyle the table)."""
    return Text(printable(str(value)))


def _hides(char: str, lines: bool) -> bool:
    if lines and char in "\n\t":
        return False
    return char in _HIDDEN or unicodedata.category(char) == "Cc"


def _escape(char: str) -> str:
    code = ord(char)
    if char in "\t\n\r":
        return repr(char)[1:-1]
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"
