"""Refusing ``re:`` patterns that could keep a worker busy for hours matching one task name.

Python's ``re`` is a backtracking engine: ``(a+)+$`` or ``(\\w+\\.?)+_task`` try exponentially
many ways to split a name that almost matches (21 s for a 34-character name, more than doubling
with each character). A match cannot be interrupted either: ``_sre`` runs to the end holding
the GIL, and a signal handler only runs between bytecodes, so a timeout could not stop it.
So every regex is checked once, when the file is read, and refused when it has:

- a quantifier that can repeat (``*``, ``+``, ``{m,n}`` with n > 1) around a group that holds
  another quantifier of varying length (``(a+)+``, ``(a?){30}``): nested quantifiers;
- such a quantifier around alternatives that can start with the same character, or match
  nothing (``(a|ab)+``, ``(\\w|_)*``);
- more than ``MAX_REGEX_QUANTIFIERS`` quantifiers of varying length in all, which bounds the
  remaining (polynomial) backtracking: matching costs at most about n**4 steps for an
  n-character name.

The check reads the pattern as parsed by CPython's own regex parser (``re._parser``, named
``sre_parse`` before Python 3.11). That module is private, so it is reached only here, by
name, through ``importlib``; the opcodes used have kept their names and shapes since
Python 3.5 (``POSSESSIVE_REPEAT`` and ``ATOMIC_GROUP`` appeared in 3.11 and are looked up
with a default). Should a later Python change them, ``test_matching.py`` fails loudly.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

#: How many quantifiers of varying length (``*``, ``+``, ``?``, ``{m,n}``) one regex may hold.
MAX_REGEX_QUANTIFIERS = 4

_parser: Any = importlib.import_module("re._parser" if sys.version_info >= (3, 11)
                                       else "sre_parse")
_c: Any = importlib.import_module("re._constants" if sys.version_info >= (3, 11)
                                  else "sre_constants")
_REPEATS = frozenset(op for op in (_c.MAX_REPEAT, _c.MIN_REPEAT,
                                   getattr(_c, "POSSESSIVE_REPEAT", None)) if op is not None)
_ATOMIC = getattr(_c, "ATOMIC_GROUP", None)
_SUGGEST = "; write a simpler regex, or a glob (docs/reference.md, 'Regular expressions')"

#: A set of first characters; ``None`` stands for "could be any character".
_First = frozenset[int] | None


class _Finding(Exception):
    pass


def regex_problem(source: str) -> str | None:
    """Why the (already compiled) regex ``source`` could backtrack for ages, or None."""
    try:
        counter = _Walk()
        counter.sequence(_parser.parse(source), repeated=False)
    except _Finding as finding:
        return f"regular expression {source!r} {finding}{_SUGGEST}"
    if counter.quantifiers > MAX_REGEX_QUANTIFIERS:
        return (f"regular expression {source!r} has more than {MAX_REGEX_QUANTIFIERS} "
                f"quantifiers (*, +, ?, {{m,n}}): {counter.quantifiers}{_SUGGEST}")
    return None


class _Walk:
    """Walks a parsed pattern; ``repeated`` says whether an enclosing quantifier repeats."""

    def __init__(self) -> None:
        self.quantifiers = 0

    def sequence(self, items: Any, *, repeated: bool) -> None:
        for op, arg in items:
            self.item(op, arg, repeated=repeated)

    def item(self, op: Any, arg: Any, *, repeated: bool) -> None:
        if op in _REPEATS:
            low, high, body = arg
            if low != high:
                self.quantifiers += 1
                if repeated:
                    raise _Finding("repeats a group that holds another quantifier (a nested "
                                   "quantifier, as in '(a+)+'), which can backtrack "
                                   "exponentially")
            self.sequence(body, repeated=repeated or high > 1)
        elif op is _c.SUBPATTERN:
            self.sequence(arg[-1], repeated=repeated)
        elif op is _c.BRANCH:
            if repeated and _overlap(arg[1]):
                raise _Finding("repeats alternatives that can match the same text (as in "
                               "'(a|ab)+'), which can backtrack exponentially")
            for branch in arg[1]:
                self.sequence(branch, repeated=repeated)
        elif op in (_c.ASSERT, _c.ASSERT_NOT):
            self.sequence(arg[1], repeated=repeated)
        elif op is _c.GROUPREF_EXISTS:
            for branch in arg[1:]:
                if branch is not None:
                    self.sequence(branch, repeated=repeated)
        elif op is _ATOMIC:
            self.sequence(arg, repeated=repeated)


def _overlap(branches: Any) -> bool:
    """Whether two alternatives can start with one character, or one can match nothing."""
    seen: set[int] = set()
    for branch in branches:
        first, empty = _first(branch)
        if empty or first is None or seen & first:
            return True
        seen |= first
    return False


def _first(items: Any) -> tuple[_First, bool]:
    """The characters a sequence can start with, and whether it can match nothing."""
    found: set[int] = set()
    for op, arg in items:
        first, empty = _first_of(op, arg)
        if first is None:
            return None, False
        found |= first
        if not empty:
            return frozenset(found), False
    return frozenset(found), True


def _first_of(op: Any, arg: Any) -> tuple[_First, bool]:
    if op is _c.LITERAL:
        return frozenset((arg,)), False
    if op is _c.IN:
        return _class_first(arg), False
    if op in _REPEATS:
        first, empty = _first(arg[2])
        return first, empty or arg[0] == 0
    if op is _c.SUBPATTERN:
        return _first(arg[-1])
    if op is _ATOMIC:
        return _first(arg)
    if op is _c.BRANCH:
        union: set[int] = set()
        empty = False
        for branch in arg[1]:
            first, can_be_empty = _first(branch)
            if first is None:
                return None, False
            union |= first
            empty = empty or can_be_empty
        return frozenset(union), empty
    if op in (_c.AT, _c.ASSERT, _c.ASSERT_NOT):
        return frozenset(), True  # zero-width
    return None, False  # any character, a class like \w, a back reference: assume anything


def _class_first(items: Any) -> _First:
    """The characters of ``[...]``; None for negated sets and categories like ``\\w``."""
    chars: set[int] = set()
    for op, arg in items:
        if op is _c.LITERAL:
            chars.add(arg)
        elif op is _c.RANGE and arg[1] - arg[0] < 256:
            chars.update(range(arg[0], arg[1] + 1))
        else:
            return None
    return frozenset(chars)
