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

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from .loader import Policies
from .patterns import Kind, Pattern, parse_pattern

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
        self._exact: dict[str, list[tuple[Pattern, int]]] = defaultdict(list)
        self._prefix: dict[int, dict[str, list[tuple[Pattern, int]]]] = defaultdict(
            lambda: defaultdict(list))
        self._suffix: dict[int, dict[str, list[tuple[Pattern, int]]]] = defaultdict(
            lambda: defaultdict(list))
        self._scan: list[tuple[Pattern, int]] = []
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
        entry = (pattern, index)
        if pattern.kind is Kind.EXACT:
            self._exact[pattern.text].append(entry)
        elif pattern.prefix:
            self._prefix[len(pattern.prefix)][pattern.prefix].append(entry)
        elif pattern.suffix:
            self._suffix[len(pattern.suffix)][pattern.suffix].append(entry)
        else:
            self._scan.append(entry)

    def _candidates(self, name: str) -> Iterable[tuple[Pattern, int]]:
        yield from self._exact.get(name, ())
        size = len(name)
        for length, bucket in self._prefix.items():
            if length <= size:
                yield from bucket.get(name[:length], ())
        for length, bucket in self._suffix.items():
            if length <= size:
                yield from bucket.get(name[size - length:], ())
        yield from self._scan

    def matching(self, name: str) -> list[int]:
        """Indexes of the policies matching ``name``, in the order they apply (winner last)."""
        best: dict[int, tuple[int, int]] = {}
        for pattern, index in self._candidates(name):
            if pattern.matches(name):
                spec = pattern.specificity
                if index not in best or spec > best[index]:
                    best[index] = spec
        return sorted(best, key=lambda i: (best[i], i))

    def resolve(self, name: str) -> ResolvedPolicy:
        """The ``ResolvedPolicy`` of the task called ``name``."""
        order = self.matching(name)
        merged = dict(self._defaults)
        for index in order:
            merged.update(self._settings[index])
        return ResolvedPolicy(name, tuple(self._labels[i] for i in order),
                              MappingProxyType(merged))

    def resolve_all(self, names: Iterable[str]) -> dict[str, ResolvedPolicy]:
        return {name: self.resolve(name) for name in names}
