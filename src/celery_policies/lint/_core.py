"""What every lint rule shares: the tasks it looks at, where a finding is reported, and how
the hits of a rule become findings.

A rule reads each task's effective settings (the file's cascade over the task's code) and
yields a ``Hit`` per task it objects to, blamed on the place in the file to change. Hits at
one place with one message become one ``Finding`` that lists the tasks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from celery import Celery

from ..errors import DocPath
from ..spec.lintcodes import RULES, Severity
from ..spec.loader import Policies
from ..spec.matching import Matcher, Setting, Source
from ..spec.model import PolicySettings

#: Whose ``lint_ignore`` applies to a finding: a policy's index, ``defaults``, or none (then
#: ``defaults`` decides, as for the rest of the file).
Owner = int | Literal["defaults"] | None

#: How many task names a finding lists before it says "and N more".
MAX_LISTED = 10


@dataclass(frozen=True)
class Finding:
    """One thing ``check`` reports: a rule, where (the key to change), and what to do."""

    code: str
    name: str
    severity: Severity
    file: str
    line: int
    column: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.code} {self.severity}: {self.message}"


@dataclass(frozen=True)
class Subject:
    """One task as the rules see it: its effective settings and the indexes of the policies
    that match it, in the order they apply (the last wins). Without an app, a stand-in for
    the tasks one policy matches."""

    name: str
    order: tuple[int, ...]
    settings: Mapping[str, Setting]

    def value(self, key: str) -> Any:
        return self.settings[key].value


@dataclass(frozen=True)
class Blame:
    """Where a finding is reported: a path in the document, and whose ``lint_ignore`` counts."""

    path: DocPath
    owner: Owner


@dataclass(frozen=True)
class Hit:
    """A rule's objection about one task (``task`` None: about the file itself).

    ``what`` says what is wrong and ``advice`` why it is dangerous and how to fix it; both
    should read the same for every task blamed at one place, which then share one finding.
    """

    blame: Blame
    what: str
    advice: str
    task: str | None = None


@dataclass(frozen=True)
class Context:
    """What the rules read: the file, its matcher, the tasks, and (when known) the app and
    the worker pool."""

    policies: Policies
    matcher: Matcher
    subjects: list[Subject]
    app: Celery | None = None
    pool: str | None = None

    def blame(self, subject: Subject, *keys: str, ordered: bool = False) -> Blame:
        """The place to report a problem that ``keys`` make together: the one of them the
        file wrote in the layer applied last (the layer that completed the combination),
        the first of ``keys`` on a tie; with ``ordered``, the first of ``keys`` the file
        wrote. ``fallback`` when the file wrote none of them."""
        best: tuple[int, str, Source] | None = None
        for key in keys:
            source = subject.settings[key].source
            rank = _rank(subject, source)
            if rank is not None and (best is None or rank > best[0]):
                best = (rank, key, source)
                if ordered:
                    break
        if best is None:
            return self.fallback(subject)
        _, key, source = best
        return Blame((*_layer(source), key), _owner(source))

    def blame_at(self, subject: Subject, key: str, *inside: str | int) -> Blame:
        """The place ``inside`` the value of ``key`` (a list item, a mapping key), in the
        layer that gave ``key``; ``fallback`` when the file did not."""
        source = subject.settings[key].source
        if _rank(subject, source) is None:
            return self.fallback(subject)
        return Blame((*_layer(source), key, *inside), _owner(source))

    def fallback(self, subject: Subject) -> Blame:
        """Where a problem the task's code or app config makes is reported: at the most
        specific policy matching the task (where the file can override it), else at
        ``defaults:``, else at the top of the file."""
        if subject.order:
            return Blame(("policies", subject.order[-1]), subject.order[-1])
        if self.policies.model.defaults is not None:
            return Blame(("defaults",), "defaults")
        return Blame((), None)

    def layers(self) -> Iterator[tuple[DocPath, Owner, PolicySettings]]:
        """``defaults:`` and every policy, with their place in the document."""
        model = self.policies.model
        if model.defaults is not None:
            yield ("defaults",), "defaults", model.defaults
        for index, policy in enumerate(model.policies):
            yield ("policies", index), index, policy

    def ignored(self, owner: Owner) -> tuple[str, ...]:
        """The codes ``owner`` silences with ``lint_ignore``."""
        model = self.policies.model
        if isinstance(owner, int):
            return model.policies[owner].lint_ignore or ()
        return (model.defaults.lint_ignore if model.defaults else None) or ()


def _rank(subject: Subject, source: Source) -> int | None:
    """How late a layer of the file applies to ``subject``; None when not from the file."""
    if source.kind == "defaults":
        return -1
    if source.kind == "policy" and source.index in subject.order:
        return subject.order.index(source.index)
    return None


def _layer(source: Source) -> DocPath:
    if source.kind == "policy" and source.index is not None:
        return ("policies", source.index)
    return ("defaults",)


def _owner(source: Source) -> Owner:
    return "defaults" if source.kind == "defaults" else source.index


Check = Callable[[Context], Iterable[Hit]]
Needs = Literal["app", "pool"] | None


@dataclass(frozen=True)
class Rule:
    """A lint rule: its code, name and severity (from ``lintcodes.RULES``), what it needs to
    run (an app, a pool, or nothing but the file) and its check."""

    code: str
    name: str
    severity: Severity
    needs: Needs
    check: Check


#: Every rule, by code; filled by ``@rule`` as the rule modules are imported.
REGISTRY: dict[str, Rule] = {}


def rule(code: str, *, needs: Needs = None) -> Callable[[Check], Check]:
    """Register a check under ``code``; it runs only when what it ``needs`` is given."""

    def register(check: Check) -> Check:
        name, severity = RULES[code]
        REGISTRY[code] = Rule(code, name, severity, needs, check)
        return check

    return register


def run(context: Context) -> list[Finding]:
    """Every rule that can run on ``context``, its hits gathered into findings, in file order;
    findings silenced by ``lint_ignore`` left out."""
    findings = []
    for code in sorted(REGISTRY):
        current = REGISTRY[code]
        if (current.needs == "app" and context.app is None) or (
                current.needs == "pool" and context.pool is None):
            continue
        findings += _gather(context, current, current.check(context))
    return sorted(findings, key=lambda f: (f.line, f.column, f.code, f.message))


def _gather(context: Context, current: Rule, hits: Iterable[Hit]) -> list[Finding]:
    groups: dict[tuple[DocPath, str, str], list[str]] = {}
    for hit in hits:
        if current.code in context.ignored(hit.blame.owner):
            continue
        tasks = groups.setdefault((hit.blame.path, hit.what, hit.advice), [])
        if hit.task is not None and hit.task not in tasks:
            tasks.append(hit.task)
    findings = []
    for (path, what, advice), names in groups.items():
        line, column = context.policies.position(path, key=True)
        tasks = names
        if context.app is None:  # the stand-in of the policy blamed goes without saying
            tasks = [name for name in names if name != _stand_in_of(context, path)]
        listed = f" ({_affected(tasks, by_name=context.app is not None)})" if tasks else ""
        findings.append(Finding(current.code, current.name, current.severity,
                                context.policies.file, line, column,
                                f"{what}{listed}: {advice}"))
    return findings


def _stand_in_of(context: Context, path: DocPath) -> str | None:
    """The name of the stand-in for the tasks of the policy at ``path``, if any."""
    if path[:1] != ("policies",) or len(path) < 2:
        return None
    return next((s.name for s in context.subjects if s.order == (path[1],)), None)


def _affected(tasks: list[str], *, by_name: bool) -> str:
    """``2 tasks: a, b`` (task names), or the stand-ins' own descriptions without an app."""
    shown = ", ".join(tasks[:MAX_LISTED])
    if len(tasks) > MAX_LISTED:
        shown += f" and {len(tasks) - MAX_LISTED} more"
    if not by_name:
        return shown
    return f"{len(tasks)} task{'s' if len(tasks) != 1 else ''}: {shown}"
