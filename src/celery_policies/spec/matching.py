"""From task names to their ``ResolvedPolicy``: which policies match, and which value wins.

Every policy whose pattern matches a task applies, merged key by key on top of ``defaults``.
For each key the most specific matching pattern wins (exact name > glob with more literal
characters > glob with fewer > ``re:``); on a tie the later policy in the file wins.

Celery's own ``task_annotations`` only knows exact names and ``'*'``, and applies ``'*'`` after
the exact name so it wins (``resolve_all`` in celery/app/annotations.py); ``task_routes`` globs
go by insertion order (celery#6670). Hence this matcher.

Matching is indexed: exact names by dict, globs by bisection over the sorted names on their
literal prefix (or suffix), so a name is tested only against the few patterns that could match
it. Regexes and globs with no literal end are tested against every name. One name or ten
thousand go through the same path; many at once is far cheaper per name.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from types import MappingProxyType
from typing import Any, Literal

from .loader import Policies
from .patterns import Kind, Pattern, parse_pattern

_Sieve = Callable[[Iterable[str]], Iterable[str]]


def _sieve(pattern: Pattern, where: str) -> _Sieve | None:
    """What narrows the names found by an index down to those ``pattern`` matches.

    None where the index lookup proves the match: an exact name, ``prefix*``, ``*suffix``. A
    glob like ``*.send_*`` is tried on every name, so a substring search on its longest
    literal discards most names at C speed before fnmatch's backtracking regex runs.
    """
    if pattern.kind is Kind.EXACT or pattern.text in (f"{pattern.prefix}*", f"*{pattern.suffix}"):
        return None
    if where == "scan" and pattern.required:
        contains = re.compile(re.escape(pattern.required)).search
        return lambda names: filter(pattern.test, filter(contains, names))
    return partial(filter, pattern.test)


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
    #: The indexes of the matching policies in the file, in the order they apply.
    order: tuple[int, ...] = ()

    def get(self, key: str, default: Any = None) -> Any:
        setting = self.settings.get(key)
        return default if setting is None else setting.value


class Matcher:
    """Compiled patterns of one policy file; resolves task names to ``ResolvedPolicy``."""

    def __init__(self, policies: Policies) -> None:
        self.policies = policies
        model = policies.model
        self._labels = [model.label(i) for i in range(len(model.policies))]
        self._defaults: dict[str, Setting] = {}
        if model.defaults is not None:
            line = policies.position(("defaults",), key=True)[0]
            source = Source("defaults", policies.file, line)
            self._defaults = {k: Setting(v, source)
                              for k, v in model.defaults.task_settings().items()}
        self._settings: list[dict[str, Setting]] = []
        # Every pattern as (specificity, policy index, n, where to look it up, the literal to
        # look up, sieve), sorted in the order policies apply; n breaks ties between patterns
        # of one policy so tuples never compare sieves.
        plan: list[tuple[tuple[int, int], int, int, str, str, _Sieve | None]] = []
        for index, policy in enumerate(model.policies):
            line = policies.position(("policies", index))[0]
            source = Source("policy", policies.file, line, index, policy.name)
            self._settings.append({k: Setting(v, source)
                                   for k, v in policy.task_settings().items()})
            for text in policy.match:
                pattern = parse_pattern(text)
                where = ("exact" if pattern.kind is Kind.EXACT else "prefix" if pattern.prefix
                         else "suffix" if pattern.suffix else "scan")
                literal = pattern.suffix[::-1] if where == "suffix" else pattern.prefix
                plan.append((pattern.specificity, index, len(plan), where, literal,
                             _sieve(pattern, where)))
        self._plan = sorted(plan)
        self._multi = {i for i, policy in enumerate(model.policies) if len(policy.match) > 1}

    def matching(self, name: str) -> list[int]:
        """Indexes of the policies matching ``name``, in the order they apply (winner last)."""
        return self._hits([name])[name]

    def resolve(self, name: str) -> ResolvedPolicy:
        """The ``ResolvedPolicy`` of the task called ``name``."""
        return self._merge(name, self.matching(name))

    def _merge(self, name: str, order: list[int]) -> ResolvedPolicy:
        merged = dict(self._defaults)
        for index in order:
            merged.update(self._settings[index])
        labels = self._labels
        return ResolvedPolicy(name, tuple([labels[i] for i in order]), MappingProxyType(merged),
                              tuple(order))

    def resolve_alone(self, index: int | None, name: str) -> ResolvedPolicy:
        """What a task matched by ``policies[index]`` alone gets (``None``: by no policy),
        called ``name``: what ``check`` lints when no app says which tasks exist."""
        return self._merge(name, [] if index is None else [index])

    def resolve_all(self, names: Iterable[str]) -> dict[str, ResolvedPolicy]:
        """``resolve`` for many names at once: far cheaper than one by one."""
        return {name: self._merge(name, order) for name, order in self._hits(names).items()}

    def _hits(self, names: Iterable[str]) -> dict[str, list[int]]:
        """The policies matching each name, in the order they apply; pattern by pattern.

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
        if multi:
            for name, order in hits.items():
                if not multi.isdisjoint(order):
                    hits[name] = _once(order)
        return hits


#: Sorts after every character a task name can hold: ``[key, key + _LAST_CHAR)`` spans the
#: names that start with ``key``.
_LAST_CHAR = "\U0010ffff"


def _once(order: list[int]) -> list[int]:
    """A policy that matched through several of its patterns applies once, at the last (most
    specific) of its places."""
    if len(order) != len(set(order)):
        return list(dict.fromkeys(reversed(order)))[::-1]
    return order
