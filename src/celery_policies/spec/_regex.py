"""Refusing ``re:`` patterns that could keep a worker busy for minutes matching one task name.

Python's ``re`` is a backtracking engine: ``(a+)+$`` or ``(\\w+\\.?)+_task`` try exponentially
many ways to split a name that almost matches (minutes for a 34-character name, doubling with
each character). A match cannot be interrupted either: ``_sre`` runs to the end holding the
GIL, and a signal handler only runs between bytecodes, so no timeout could stop it. So every
regex is checked once, when the file is read, and refused when it has:

- a quantifier that can repeat (``*``, ``+``, ``{m,n}`` with n > 1) around a group that holds
  another quantifier of varying length (``(a+)+``, ``(a?){30}``): nested quantifiers;
- such a quantifier around alternatives that can start with the same character, or match
  nothing (``(\\d\\d|[0-9])+``, ``(ab|a)*``);
- quantifiers in a row that can match the same characters, and so trade them back and forth,
  in more than ``MAX_REGEX_SPLITS`` ways on a ``NAME_LENGTH``-character name (counting
  ``NAME_LENGTH`` for each ``*`` or ``+``, 2 for a ``?``, n-m+1 for ``{m,n}``, multiplied).
  ``.*a.*a.*b`` is a million and allowed, ``.*a.*a.*a.*b`` a hundred million and refused. A
  character that no quantifier of the row can match ends the row: ``[a-z]+\\.[a-z]+`` is two
  rows of a hundred, not one of ten thousand. This bounds the backtracking that remains.

The check errs on the side of refusing. It reads the pattern as parsed by CPython's own regex
parser (``re._parser``, named ``sre_parse`` before Python 3.11): that module is private, so it
is reached only here, through ``importlib``. The opcodes used have kept their names and shapes
since Python 3.8 (``POSSESSIVE_REPEAT`` and ``ATOMIC_GROUP`` appeared in 3.11 and are looked
up with a default); should a later Python change them, tests/unit/test_matching.py fails.
"""

from __future__ import annotations

import importlib
import string
import sys
from typing import Any

#: How many ways one row of quantifiers may split a task name of ``NAME_LENGTH`` characters:
#: a million is three ``.*`` in a row, milliseconds of backtracking at worst.
MAX_REGEX_SPLITS = 1_000_000
#: The task-name length, in characters, ``MAX_REGEX_SPLITS`` is counted for: longer than
#: nearly every real task name.
NAME_LENGTH = 100

_parser: Any = importlib.import_module("re._parser" if sys.version_info >= (3, 11)
                                       else "sre_parse")
_c: Any = importlib.import_module("re._constants" if sys.version_info >= (3, 11)
                                  else "sre_constants")
_REPEATS = frozenset(op for op in (_c.MAX_REPEAT, _c.MIN_REPEAT,
                                   getattr(_c, "POSSESSIVE_REPEAT", None)) if op is not None)
_SUGGEST = "; write a simpler regex, or a glob (docs/reference.md, 'Regular expressions')"
#: Where ``_splits`` stops counting: far above the limit, and keeps the numbers small.
_CAP = 10**13

# Characters are told apart as ASCII codes, plus one code standing for every other character.
_OTHER = 128
_ALL = frozenset(range(_OTHER + 1))
_WORD = frozenset(map(ord, string.ascii_letters + string.digits + "_"))
_DIGIT = frozenset(map(ord, string.digits))
_SPACE = frozenset(map(ord, string.whitespace))
_CATEGORIES = {
    _c.CATEGORY_WORD: _WORD | {_OTHER}, _c.CATEGORY_NOT_WORD: _ALL - _WORD,
    _c.CATEGORY_DIGIT: _DIGIT | {_OTHER}, _c.CATEGORY_NOT_DIGIT: _ALL - _DIGIT,
    _c.CATEGORY_SPACE: _SPACE | {_OTHER}, _c.CATEGORY_NOT_SPACE: _ALL - _SPACE,
}
_LETTERS = frozenset(map(ord, string.ascii_letters))

Chars = frozenset[int]


class _Finding(Exception):
    pass


def regex_problem(source: str) -> str | None:
    """Why the (already compiled) regex ``source`` could backtrack for ages, or None."""
    tree = _parser.parse(source)
    check = _Check(_ignores_case(tree))
    try:
        check.nesting(tree, repeated=False)
    except _Finding as finding:
        return f"regular expression '{source}' {finding}{_SUGGEST}"
    splits = check.splits(tree)
    if splits > MAX_REGEX_SPLITS:
        shown = f"{splits:,}" if splits < _CAP else f"more than {_CAP:,}"
        return (f"regular expression '{source}' has quantifiers in a row that can match the "
                f"same characters: they can split a {NAME_LENGTH}-character task name in "
                f"{shown} ways, more than {MAX_REGEX_SPLITS:,}, and matching may try them "
                f"all{_SUGGEST}")
    return None


def _ignores_case(tree: Any) -> bool:
    state = getattr(tree, "state", None)
    if getattr(state, "flags", 0) & _c.SRE_FLAG_IGNORECASE:
        return True
    return any((op is _c.SUBPATTERN and arg[1] & _c.SRE_FLAG_IGNORECASE)
               or _ignores_case(_children(op, arg)) for op, arg in tree)


def _children(op: Any, arg: Any) -> list[tuple[Any, Any]]:
    """The (op, arg) items nested in one item, flattened, for ``_ignores_case``."""
    if op in _REPEATS:
        return list(arg[2])
    if op is _c.SUBPATTERN:
        return list(arg[-1])
    if op is _c.BRANCH:
        return [item for branch in arg[1] for item in branch]
    if op in (_c.ASSERT, _c.ASSERT_NOT):
        return list(arg[1])
    if op is _c.GROUPREF_EXISTS:
        return [item for branch in arg[1:] if branch is not None for item in branch]
    return []


class _Check:
    def __init__(self, ignore_case: bool) -> None:
        self.ignore_case = ignore_case

    def nesting(self, items: Any, *, repeated: bool) -> None:
        """Raise ``_Finding`` for nested quantifiers and ambiguous repeated alternatives;
        ``repeated`` says whether an enclosing quantifier repeats."""
        for op, arg in items:
            if op in _REPEATS:
                low, high, body = arg
                if low != high and repeated:
                    raise _Finding("repeats a group that holds another quantifier (a nested "
                                   "quantifier, as in '(a+)+'), which can backtrack "
                                   "exponentially")
                self.nesting(body, repeated=repeated or high > 1)
            elif op is _c.BRANCH:
                if repeated and self.overlap(arg[1]):
                    raise _Finding("repeats alternatives that can match the same text (as in "
                                   "'(ab|a)+'), which can backtrack exponentially")
                for branch in arg[1]:
                    self.nesting(branch, repeated=repeated)
            else:
                self.nesting(_children(op, arg), repeated=repeated)

    def overlap(self, branches: Any) -> bool:
        """Whether two alternatives can start with one character, or one can match nothing."""
        seen: Chars = frozenset()
        for branch in branches:
            first, empty = self.first(branch)
            if empty or seen & first:
                return True
            seen |= first
        return False

    def first(self, items: Any) -> tuple[Chars, bool]:
        """The characters a sequence can start with, and whether it can match nothing."""
        found: Chars = frozenset()
        for op, arg in items:
            if op in _REPEATS:
                chars, empty = self.first(arg[2])
                empty = empty or arg[0] == 0
            elif op is _c.SUBPATTERN:
                chars, empty = self.first(arg[-1])
            elif op is _c.BRANCH:
                parts = [self.first(branch) for branch in arg[1]]
                chars = frozenset().union(*(p[0] for p in parts))
                empty = any(p[1] for p in parts)
            elif op in (_c.AT, _c.ASSERT, _c.ASSERT_NOT):
                chars, empty = frozenset(), True  # zero-width
            else:
                chars, empty = self.one(op, arg), False
            found |= chars
            if not empty:
                return found, False
        return found, True

    def one(self, op: Any, arg: Any) -> Chars:
        """The characters one item that matches one character can match (every character
        for anything else: a back reference, an atomic group)."""
        if op is _c.LITERAL:
            chars: Chars = frozenset((min(arg, _OTHER),))
        elif op is _c.NOT_LITERAL:
            chars = _ALL - {arg} | {_OTHER}
        elif op is _c.IN:
            chars = self.in_set(arg)
        else:
            return _ALL
        if self.ignore_case and chars & (_LETTERS | {_OTHER}):
            chars |= _LETTERS | {_OTHER}  # case folds letters, some of them to and from non-ASCII
        return chars

    @staticmethod
    def in_set(items: Any) -> Chars:
        chars: set[int] = set()
        negate = False
        for op, arg in items:
            if op is _c.NEGATE:
                negate = True
            elif op is _c.LITERAL:
                chars.add(min(arg, _OTHER))
            elif op is _c.RANGE:
                low, high = arg
                chars.update(range(min(low, _OTHER), min(high, _OTHER - 1) + 1))
                if high >= _OTHER:
                    chars.add(_OTHER)
            else:
                chars |= _CATEGORIES.get(arg, _ALL) if op is _c.CATEGORY else _ALL
        return _ALL - chars | {_OTHER} if negate else frozenset(chars)

    def chars(self, items: Any) -> Chars:
        """Every character a sequence can match."""
        found: Chars = frozenset()
        for op, arg in items:
            if op in (_c.AT, _c.ASSERT, _c.ASSERT_NOT):
                continue
            if op in (_c.LITERAL, _c.NOT_LITERAL, _c.IN, _c.ANY):
                found |= self.one(op, arg)
            elif op in (_c.SUBPATTERN, *_REPEATS, _c.BRANCH, _c.GROUPREF_EXISTS):
                found |= self.chars(_children(op, arg))
            else:
                return _ALL
        return found

    def splits(self, items: Any) -> int:
        """The most ways one row of quantifiers in ``items`` can split a ``NAME_LENGTH``-
        character name: an over-estimate; nested quantifiers were refused before."""
        worst, run = 1, 1
        row: Chars = frozenset()  # what the row's quantifiers can match
        for op, arg in _inline(items):
            if op in _REPEATS and arg[0] != arg[1]:
                low, high, body = arg
                ways = 2 if high == 1 else min(high - low + 1, NAME_LENGTH)
                run = min(run * ways * self.splits(body), _CAP)
                row |= self.chars(body)
            elif op is _c.BRANCH or op is _c.GROUPREF_EXISTS:
                branches = arg[1] if op is _c.BRANCH else [b for b in arg[1:] if b is not None]
                run = min(run * sum(self.splits(branch) for branch in branches), _CAP)
                row |= self.chars(_children(op, arg))
            elif op in (_c.ASSERT, _c.ASSERT_NOT):
                run = min(run * self.splits(arg[1]), _CAP)
            elif op is _c.AT:
                continue
            else:
                # One character that must be there, or a fixed number of copies of a group
                # without quantifiers: when no quantifier of the row can match it, the row
                # ends there, for each quantifier of it can only stop before it.
                needed = op not in _REPEATS or arg[0] >= 1
                first = self.first(arg[2])[0] if op in _REPEATS else self.one(op, arg)
                if needed and not first & row:
                    worst, run, row = max(worst, run), 1, frozenset()
                else:
                    row |= first
        return max(worst, run)


def _inline(items: Any) -> Any:
    """The items of a sequence, with plain groups ``(...)`` opened in place."""
    for op, arg in items:
        if op is _c.SUBPATTERN:
            yield from _inline(arg[-1])
        elif op in _REPEATS and arg[0] == arg[1] == 1:
            yield from _inline(arg[2])
        else:
            yield op, arg
