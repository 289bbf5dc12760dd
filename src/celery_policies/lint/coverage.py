"""Rules comparing the file with the app's registered tasks: patterns that match none
(CP114), tasks no policy matches (CP115, info), policies that change nothing (CP116)."""

from __future__ import annotations

from collections.abc import Iterator

from ..spec.patterns import parse_pattern
from ._core import Blame, Context, Hit, Subject, rule


@rule("CP114", needs="app")
def pattern_matches_no_task(context: Context) -> Iterator[Hit]:
    # The matcher already found each task's policies: only a policy that matched something
    # through one of several patterns needs its patterns tried one by one.
    matched = {index for subject in context.subjects for index in subject.order}
    names = [subject.name for subject in context.subjects]
    for index, policy in enumerate(context.policies.model.policies):
        if index in matched and len(policy.match) == 1:
            continue
        for position, text in enumerate(policy.match):
            pattern = parse_pattern(text)
            if index in matched and any(pattern.matches(name) for name in names):
                continue
            yield Hit(Blame(("policies", index, "match", position), index),
                      f"pattern {text!r} matches no registered task",
                      "a renamed or removed task, or a typo: the policy applies to nothing "
                      "through it; correct the pattern or remove it")


@rule("CP115", needs="app")
def task_not_covered(context: Context) -> Iterator[Hit]:
    has_defaults = context.policies.model.defaults is not None
    gets = "only the defaults" if has_defaults else "no setting from this file"
    for subject in context.subjects:
        if not subject.order:
            yield Hit(Blame(("policies",), None), "no policy matches",
                      f"they get {gets}; add a policy if they need their own", subject.name)


@rule("CP116", needs="app")
def dead_policy(context: Context) -> Iterator[Hit]:
    matched: dict[int, list[Subject]] = {}
    for subject in context.subjects:
        for index in subject.order:
            matched.setdefault(index, []).append(subject)
    model = context.policies.model
    for index, policy in enumerate(model.policies):
        keys = policy.task_settings()
        if not keys or index not in matched:
            continue  # a policy with no settings only marks tasks as covered; CP114: no tasks
        winners = _winners(matched[index], index, keys)
        if winners is not None:
            yield Hit(Blame(("policies", index), index),
                      "every key of this policy is overridden for every task it matches (by "
                      f"{', '.join(model.label(i) for i in sorted(winners))})",
                      "it changes nothing; remove it, or give the tasks it should win a more "
                      "specific pattern (docs/precedence.md)")


def _winners(subjects: list[Subject], index: int, keys: dict[str, object]) -> set[int] | None:
    """The policies that give every one of ``keys`` to ``subjects`` instead of policy
    ``index``; None when policy ``index`` gives any of them to any task."""
    winners = set()
    for subject in subjects:
        for key in keys:
            source = subject.settings[key].source
            if source.kind != "policy" or source.index is None or source.index == index:
                return None
            winners.add(source.index)
    return winners
