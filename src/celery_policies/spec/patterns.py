"""Task-name patterns: exact names, fnmatch globs (``*``, ``?``, ``[...]``) and ``re:`` regexes.

A pattern's *specificity* orders the policies that match one task: an exact name beats any
glob, among globs more literal characters win, and a regex is the least specific of all.
"""

from __future__ import annotations

import fnmatch
import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum

from ._regex import regex_problem

REGEX_PREFIX = "re:"
#: The longest pattern, in characters: far beyond any task name, and short enough that
#: compiling and checking it take no time (both grow with the length: seconds at 100,000).
MAX_PATTERN_LENGTH = 1000
#: How many distinct patterns ``parse_pattern`` keeps compiled. Python's own ``re`` cache holds
#: only 512, so a file with more patterns was compiled again by every ``Matcher``.
PATTERN_CACHE_SIZE = 8192
_GLOB_CHARS = frozenset("*?[")


class Kind(IntEnum):
    """Pattern kinds, ordered from least to most specific."""

    REGEX = 0
    GLOB = 1
    EXACT = 2


@dataclass(frozen=True)
class Pattern:
    """A checked pattern. ``literal`` counts the characters a glob matches literally."""

    text: str
    kind: Kind
    regex: re.Pattern[str] | None  # None for exact names, which are compared as strings
    literal: int
    prefix: str  # literal text before the first wildcard ('' for regexes)
    suffix: str  # literal text after the last wildcard ('' for regexes)
    required: str  # the longest literal run, which every match contains ('' for regexes)

    @property
    def specificity(self) -> tuple[int, int]:
        return (int(self.kind), self.literal)

    @property
    def test(self) -> Callable[[str], object]:
        """A function of a task name, truthy when this pattern matches it."""
        if self.regex is None:
            return self.text.__eq__
        # fnmatch.translate() ends a glob with \Z, so match() is enough for globs.
        return self.regex.fullmatch if self.kind is Kind.REGEX else self.regex.match

    def matches(self, name: str) -> bool:
        return name == self.text if self.regex is None else bool(self.test(name))


def _bracket_end(text: str, start: int) -> int:
    """Index just past the ``]`` closing the ``[`` at ``start``, or -1 (fnmatch's own rule)."""
    j = start + 1
    if j < len(text) and text[j] in "!^":
        j += 1
    if j < len(text) and text[j] == "]":
        j += 1
    end = text.find("]", j)
    return -1 if end < 0 else end + 1


def _glob_literals(text: str) -> tuple[int, str, str, str]:
    """Count literal characters and find the literal prefix, suffix and longest literal run
    of a checked glob."""
    literal, i, first, last = 0, 0, -1, -1
    runs, run = [], ""
    while i < len(text):
        char = text[i]
        if char in "*?[":
            end = i + 1 if char != "[" else _bracket_end(text, i)
            first = i if first < 0 else first
            last = end
            i = end
            runs.append(run)
            run = ""
        else:
            literal += 1
            run += char
            i += 1
    return literal, text[:first], text[last:], max([*runs, run], key=len)


def _shorten(text: str, limit: int = 60) -> str:
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}..."


def parse_pattern(text: str) -> Pattern:
    """Check and compile one pattern; raise ``ValueError`` naming what is wrong.

    Patterns are cached: validating a file and building its ``Matcher`` compile each once.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"expected a task-name pattern, got {text!r}")
    if len(text) > MAX_PATTERN_LENGTH:
        raise ValueError(f"a task-name pattern may be at most {MAX_PATTERN_LENGTH} characters, "
                         f"got {len(text)}")
    return _parse(text)


@functools.lru_cache(maxsize=PATTERN_CACHE_SIZE)
def _parse(text: str) -> Pattern:
    if text.startswith(REGEX_PREFIX):
        source = text[len(REGEX_PREFIX):]
        if not source:
            raise ValueError("empty regular expression after 're:'")
        try:
            compiled = re.compile(source)
            problem = regex_problem(source)
        except re.error as exc:
            raise ValueError(f"bad regular expression {source!r}: {exc}") from None
        except RecursionError:  # CPython's regex parser recurses once per nested group
            raise ValueError(f"regular expression {_shorten(source)} nests too deeply") from None
        if problem is not None:
            raise ValueError(problem)
        return Pattern(text, Kind.REGEX, compiled, 0, "", "", "")
    if any(c.isspace() for c in text):
        raise ValueError(f"a task-name pattern has no spaces, got {text!r}")
    if not _GLOB_CHARS & set(text):
        return Pattern(text, Kind.EXACT, None, len(text), text, text, text)
    i = text.find("[")
    while i >= 0:
        end = _bracket_end(text, i)
        if end < 0:
            raise ValueError(f"bad glob {text!r}: '[' at position {i + 1} is never closed")
        i = text.find("[", end)
    literal, prefix, suffix, required = _glob_literals(text)
    return Pattern(text, Kind.GLOB, re.compile(fnmatch.translate(text)), literal, prefix, suffix,
                   required)
