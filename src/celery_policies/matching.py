"""From task names to their ``ResolvedPolicy``: which policies match, and which value wins.

Every policy whose pattern matches a task applies, merged key by key on top of ``defaults``.
For each key the most specific matching pattern wins (exact name > glob with more literal
characters > glob with fewer > ``re:``); on a tie the later policy in the file wins.

Celery's own ``task_annotations`` only knows exact names and ``'*'``, and applies ``'*'`` after
the exact name so it wins (``resolve_all`` in celery/app/annotations.py); ``task_routes`` globs
go by insertion order (celery#6670). Hence this matcher.

Matching is indexed: exact names by dict, globs by their literal prefix (or suffix), so a name
is tested only against the few patterns that could match it. Regexes and globs with no literal
end are tested against every name.
"""

from __future__ import annotations

import bisect
import re
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from types import MappingProxyType
from typing import Any, Literal

from .loader import Policies
from .patterns import Kind, Pattern, parse_pattern

# A compiled pattern in the index: its test, its specificity, and its policy's index.
_Entry = tuple[Callable[[str], object] | None, tuple[int, int], int]


def _containing(text: str, test: Callable[[str], object]) -> Callable[[str], object]:
    return lambda name: text in name and test(name)


def _prefiltered(text: str, test: Callable[[str], object]) -> Callable[[Iterable[str]],
                                                                        Iterable[str]]:
    """Filter names by ``test``, skipping at C speed those that lack the literal ``text``."""
    contains = re.compile(re.escape(text)).search
    return lambda names: filter(test, filter(contains, names))


SourceKind = Literal["defaults", "policy", "code", "config", "celery", "plugin"]


@dataclass(frozen=True)
class Source:
    """Where a setting's value came from."""

    kind: SourceKind
    file: str | None = None
    line: int | None = None
    index: int | None = None
    name: str | None = None
    detail: str | None = None  # e.g. the app config key

    def __str__(self) -> str:
        if self.kind == "defaults":
            return f"defaults ({self.file}:{self.line})"
        if self.kind == "policy":
            label = f"policies[{self.index}]" + (f' "{self.name}"' if self.name else "")
            return f"{label} ({self.file}:{self.line})"
        text = {"code": "task code", "config": "app config", "celery": "celery default",
                "plugin": "celery-policies default"}[self.kind]
        return f"{text} ({self.detail})" if self.detail else text

    @property
    def from_file(self) -> bool:
        return self.kind in ("defaults", "policy")


@dataclass(frozen=True)
class Setting:
    """One effective setting: its value (seconds for durations) and where it came from."""

    value: Any
    source: Source


@dataclass(frozen=True)
class ResolvedPolicy:
    """The policy of one task: every key the file sets for it, with provenance.

    ``matched`` lists the labels of the matching policies in the order they were applied
    (the last one wins every key it sets). Keys the file does not set are absent.
    """

    task: str
    matched: tuple[str, ...]
    settings: Mapping[str, Setting] = field(default_factory=lambda: MappingProxyType({}))

    def get(self, key: str, default: Any = None) -> Any:
        setting = self.settings.get(key)
        return default if setting is None else setting.value


class Matcher:
    """Compiled patterns of one policy file; resolves task names to ``ResolvedPolicy``."""

    def __init__(self, policies: Policies) -> None:
        model = policies.model
        self._labels = [model.label(i) for i in range(len(model.policies))]
        self._defaults: dict[str, Setting] = {}
        if model.defaults is not None:
            line = policies.position(("defaults",), key=True)[0]
            source = Source("defaults", policies.file, line)
            self._defaults = {k: Setting(v, source) for k, v in model.defaults.set_values().items()}
        self._settings: list[dict[str, Setting]] = []
        self._exact: dict[str, list[_Entry]] = defaultdict(list)
        self._prefix: dict[int, dict[str, list[_Entry]]] = defaultdict(lambda: defaultdict(list))
        self._suffix: dict[int, dict[str, list[_Entry]]] = defaultdict(lambda: defaultdict(list))
        self._scan: list[_Entry] = []
        # resolve_all's plan: every pattern as (specificity, policy index, where to look,
        # literal to look up, test or None), sorted in the order policies apply.
        self._plan: list[tuple[tuple[int, int], int, int, str, str,
                               Callable[[Iterable[str]], Iterable[str]] | None]] = []
        self._patterns_of = [policy.match for policy in model.policies]
        self._multi: set[int] = set()  # policies with several patterns
        for index, policy in enumerate(model.policies):
            line = policies.position(("policies", index))[0]
            source = Source("policy", policies.file, line, index, policy.name)
            values = policy.set_values()
            values.pop("match", None)
            values.pop("name", None)
            self._settings.append({k: Setting(v, source) for k, v in values.items()})
            for text in policy.match:
                self._add(parse_pattern(text), index)

    def _add(self, pattern: Pattern, index: int) -> None:
        if pattern.kind is Kind.EXACT:
            bucket, certain = self._exact[pattern.text], True
        elif pattern.prefix:
            bucket = self._prefix[len(pattern.prefix)][pattern.prefix]
            certain = pattern.text == pattern.prefix + "*"
        elif pattern.suffix:
            bucket = self._suffix[len(pattern.suffix)][pattern.suffix]
            certain = pattern.text == "*" + pattern.suffix
        else:
            bucket, certain = self._scan, False
        # Finding an exact name, 'prefix*' or '*suffix' in its bucket proves the match, so it
        # needs no test. Other tests are bound once: resolving calls them for every candidate.
        test = None if certain else pattern.test
        if test is not None and bucket is self._scan and pattern.required:
            # A glob like '*.send_*' is tried on every name; `in` rejects most names far faster
            # than fnmatch's regex, whose leading '.*' backtracks.
            test = _containing(pattern.required, test)
        bucket.append((test, pattern.specificity, index))
        where = ("exact" if pattern.kind is Kind.EXACT else "prefix" if pattern.prefix
                 else "suffix" if pattern.suffix else "scan")
        literal = pattern.suffix[::-1] if where == "suffix" else pattern.prefix
        sieve = None if test is None else (
            _prefiltered(pattern.required, pattern.test) if where == "scan" and pattern.required
            else partial(filter, test))
        # the plan's length breaks ties, so tuples never go on to compare the sieves
        bisect.insort(self._plan, (pattern.specificity, index, len(self._plan), where, literal,
                                   sieve))
        if len(self._patterns_of[index]) > 1:
            self._multi.add(index)

    def _candidates(self, name: str) -> list[_Entry]:
        found = list(self._exact.get(name, ()))
        size = len(name)
        for length, bucket in self._prefix.items():
            if length <= size:
                found += bucket.get(name[:length], ())
        for length, bucket in self._suffix.items():
            if length <= size:
                found += bucket.get(name[size - length:], ())
        return found + self._scan

    def matching(self, name: str) -> list[int]:
        """Indexes of the policies matching ``name``, in the order they apply (winner last)."""
        best: dict[int, tuple[int, int]] = {}
        for test, spec, index in self._candidates(name):
            if (test is None or test(name)) and (index not in best or spec > best[index]):
                best[index] = spec
        return [index for _, index in sorted((spec, i) for i, spec in best.items())]

    def resolve(self, name: str) -> ResolvedPolicy:
        """The ``ResolvedPolicy`` of the task called ``name``."""
        return self._merge(name, self.matching(name))

    def _merge(self, name: str, order: list[int]) -> ResolvedPolicy:
        merged = dict(self._defaults)
        for index in order:
            merged.update(self._settings[index])
        labels = self._labels
        return ResolvedPolicy(name, tuple([labels[i] for i in order]), MappingProxyType(merged))

    def resolve_all(self, names: Iterable[str]) -> dict[str, ResolvedPolicy]:
        """``resolve`` for many names at once, pattern by pattern instead of name by name.

        Names are sorted once, so every ``prefix...`` glob finds its names by bisection, and
        every ``...suffix`` glob likewise among the names written backwards: the cost grows
        with the number of matches, not names x patterns. Regexes and globs with no literal
        end are still tried on every name. Patterns are visited in the order policies apply,
        so each name's list of matches comes out already in that order.
        """
        unique = list(dict.fromkeys(names))
        hits: dict[str, list[int]] = {name: [] for name in unique}
        forward = sorted(unique)
        backward = sorted(name[::-1] for name in unique)
        for _, index, _, where, literal, sieve in self._plan:
            if where == "exact":
                found: Iterable[str] = (literal,) if literal in hits else ()
            elif where == "scan":
                found = unique
            else:
                ordered = forward if where == "prefix" else backward
                low = bisect_left(ordered, literal)
                found = ordered[low:bisect_left(ordered, literal + _LAST_CHAR, low)]
                if where == "suffix":
                    found = [name[::-1] for name in found]
            for name in found if sieve is None else sieve(found):
                hits[name].append(index)
        multi = self._multi
        return {name: self._merge(name, _once(order) if multi and not multi.isdisjoint(order)
                                  else order) for name, order in hits.items()}


#: Sorts after every character a task name can hold: ``[key, key + _LAST_CHAR)`` spans the
#: names that start with ``key``.
_LAST_CHAR = "\U0010ffff"


def _once(order: list[int]) -> list[int]:
    """A policy that matched through several of its patterns applies once, at the last (most
    specific) of its places."""
    if len(order) != len(set(order)):
        return list(dict.fromkeys(reversed(order)))[::-1]
    return order
