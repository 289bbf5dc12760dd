"""Text for a terminal: escaped, never read as markup."""

from __future__ import annotations

import unicodedata
from typing import Any

from rich.text import Text

#: Characters shown escaped besides the control characters (C0, DEL, C1): the bidirectional
#: overrides and isolates, which reorder what follows them on screen, and the Unicode line
#: and paragraph separators.
_HIDDEN = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u2028\u2029")


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
