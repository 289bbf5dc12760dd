"""Precedence: every matching policy applies; per key, the most specific pattern wins."""

from __future__ import annotations

import re
import time

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from celery_policies import parse_policies
from celery_policies.spec.matching import Matcher
from celery_policies.spec.patterns import Kind, parse_pattern
from tests.conftest import load, problems


def resolve(text: str, name: str) -> dict[str, object]:
    resolved = Matcher(load(text)).resolve(name)
    return {key: setting.value for key, setting in resolved.settings.items()}


def test_defaults_apply_to_every_task() -> None:
    assert resolve("version: 1\ndefaults: {max_retries: 2}\n", "any.task") == {"max_retries": 2}


def test_exact_name_beats_any_glob_whatever_the_order() -> None:
    text = """
        version: 1
        policies:
          - {match: billing.charge, max_retries: 1}
          - {match: "billing.charg*", max_retries: 2}
    """
    assert resolve(text, "billing.charge") == {"max_retries": 1}


def test_glob_with_more_literal_characters_wins() -> None:
    text = """
        version: 1
        policies:
          - {match: "billing.refunds.*", max_retries: 1}
          - {match: "billing.*", max_retries: 2}
    """
    assert resolve(text, "billing.refunds.full") == {"max_retries": 1}
    assert resolve(text, "billing.charge") == {"max_retries": 2}


def test_regex_is_least_specific() -> None:
    text = """
        version: 1
        policies:
          - {match: "*", max_retries: 2}
          - {match: "re:billing\\\\..*", max_retries: 9}
    """
    assert resolve(text, "billing.charge") == {"max_retries": 2}


def test_later_policy_wins_a_tie() -> None:
    text = """
        version: 1
        policies:
          - {match: "a.*", max_retries: 1}
          - {match: "a.?", max_retries: 2}
    """
    assert resolve(text, "a.b") == {"max_retries": 2}


def test_keys_merge_from_several_policies_and_defaults() -> None:
    text = """
        version: 1
        defaults: {max_retries: 3, acks_late: false}
        policies:
          - {match: "shop.*", time_limit: 1m, acks_late: true}
          - {match: shop.reports.monthly, time_limit: 1h}
    """
    assert resolve(text, "shop.reports.monthly") == {
        "max_retries": 3, "acks_late": True, "time_limit": 3600.0}


def test_null_limit_overrides_a_less_specific_limit() -> None:
    text = """
        version: 1
        defaults: {time_limit: 1m}
        policies:
          - {match: reports.big, time_limit: null}
    """
    assert resolve(text, "reports.big") == {"time_limit": None}
    assert resolve(text, "reports.small") == {"time_limit": 60.0}


def test_policy_with_several_patterns_takes_its_most_specific_match() -> None:
    text = """
        version: 1
        policies:
          - {match: ["*", exact.name], max_retries: 1}
          - {match: "exact.*", max_retries: 2}
    """
    assert resolve(text, "exact.name") == {"max_retries": 1}
    assert resolve(text, "exact.other") == {"max_retries": 2}


def test_lists_are_taken_whole_not_merged() -> None:
    text = """
        version: 1
        defaults: {autoretry_for: [ConnectionError]}
        policies:
          - {match: "a.*", autoretry_for: [TimeoutError]}
    """
    assert resolve(text, "a.b") == {"autoretry_for": ("TimeoutError",)}


def test_provenance_names_the_policy_and_its_line() -> None:
    text = """
        version: 1
        defaults:
          max_retries: 3
        policies:
          - name: payments
            match: "billing.*"
            acks_late: false
          - match: billing.charge
            time_limit: 30s
    """
    resolved = Matcher(load(text)).resolve("billing.charge")
    assert resolved.matched == ("payments", "policies[1]")
    sources = {key: str(setting.source) for key, setting in resolved.settings.items()}
    assert sources == {"max_retries": "defaults (policies.yaml:2)",
                       "acks_late": 'policies[0] "payments" (policies.yaml:5)',
                       "time_limit": "policies[1] (policies.yaml:8)"}


def test_unmatched_task_gets_nothing_but_defaults() -> None:
    resolved = Matcher(load("version: 1\npolicies:\n  - {match: a, max_retries: 1}\n")).resolve(
        "b")
    assert (resolved.matched, dict(resolved.settings)) == ((), {})


@pytest.mark.parametrize(("pattern", "name", "matches"), [
    ("shop.*", "shop.a.b", True), ("shop.?", "shop.ab", False), ("*.send_*", "x.send_mail", True),
    ("shop.[ab]x", "shop.bx", True), ("shop.[!ab]x", "shop.bx", False),
    ("re:shop\\.\\d+", "shop.12", True), ("re:shop", "shop.12", False),
    ("Shop.*", "shop.x", False),
])
def test_pattern_semantics(pattern: str, name: str, matches: bool) -> None:
    """Globs follow fnmatch (case-sensitive); regexes must match the whole name."""
    assert parse_pattern(pattern).matches(name) is matches
    index_says = bool(Matcher(load(f"version: 1\npolicies:\n  - match: '{pattern}'\n")).matching(
        name))
    assert index_says is matches


@pytest.mark.parametrize(("pattern", "kind", "literal"), [
    ("a.b.c", Kind.EXACT, 5), ("a.*", Kind.GLOB, 2), ("a.[xy]?", Kind.GLOB, 2),
    ("re:.*", Kind.REGEX, 0),
])
def test_specificity(pattern: str, kind: Kind, literal: int) -> None:
    parsed = parse_pattern(pattern)
    assert (parsed.kind, parsed.literal) == (kind, literal)


PARTS = st.sampled_from(["app1", "app2", "mod", "send_mail", "report", "x"])
NAMES = st.lists(PARTS, min_size=1, max_size=3).map(".".join)
PATTERNS = st.one_of(
    NAMES,
    NAMES.map(lambda n: n + ".*"), NAMES.map(lambda n: "*." + n),
    NAMES.map(lambda n: "*" + n + "*"),
    NAMES.map(lambda n: n.replace("a", "?", 1)), NAMES.map(lambda n: n.replace("p", "[pq]", 1)),
    NAMES.map(lambda n: "re:" + re.escape(n) + ".*"), st.just("*"),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(PATTERNS, min_size=1, max_size=3), min_size=1, max_size=12),
       st.lists(NAMES, max_size=30))
def test_resolving_in_bulk_agrees_with_resolving_one_by_one(
        patterns: list[list[str]], names: list[str]) -> None:
    """resolve_all finds names pattern by pattern; it must give what resolve gives per name."""
    policies = [{"match": p, "max_retries": i, "name": f"p{i}"} for i, p in enumerate(patterns)]
    matcher = Matcher(parse_policies(yaml.safe_dump({"version": 1, "policies": policies})))
    bulk = matcher.resolve_all(names)
    assert sorted(bulk) == sorted(set(names))
    for name in names:
        assert bulk[name] == matcher.resolve(name)


@pytest.mark.parametrize(("regex", "reason"), [
    (r"(a+)+$", "nested quantifier"),
    (r"(\w+\.?)+_task", "nested quantifier"),
    (r"(?:a*)*b", "nested quantifier"),
    (r"(a{1,3}){2,}", "nested quantifier"),
    (r"(?:x?){30}x{30}", "nested quantifier"),
    (r"(?:(?=\w+)x)+", "nested quantifier"),
    (r"(?:\d\d|[0-9])+x", "alternatives that can match the same text"),
    (r"(?:ab|a)*c", "alternatives that can match the same text"),
    (r"(?:shop\.|\w+)+", "alternatives that can match the same text"),
    (r".*a.*a.*a.*b", "can split a 100-character task name in 100,000,000 ways"),
    (r"\w+\w+\w+\w+_task", "can split a 100-character task name in 100,000,000 ways"),
    ("a?" * 20 + "a{20}", "can split a 100-character task name in 1,048,576 ways"),
    (r"(?i)[a-z]+A[a-z]+A[a-z]+A[a-z]+", "in 100,000,000 ways"),
])
def test_regexes_that_can_backtrack_for_ages_are_refused(regex: str, reason: str) -> None:
    """Python's re backtracks: these take seconds to hours on one task name."""
    lines = problems(f"version: 1\npolicies:\n  - match: 're:{regex}'\n")
    assert len(lines) == 1
    assert lines[0].startswith("policies.yaml:3:12: policies[0].match[0]: ")
    assert reason in lines[0]


@pytest.mark.parametrize("regex", [
    r"shop\..*", r"(shop|billing)\.[a-z_]+\.send_\w+", r"[a-z]+\.tasks\.(?:send|charge)_\w+",
    r"shop\.(?:emails|billing)\..+_v\d+", r"(?:ab)+", r"(?:a{2})+", r"(?:foo\.|bar\.)+x",
    r"x(?:\.v[0-9]){1,3}", r"\w+\.\w+\.\w+\.\w+", r"(\w|_)+$", r".*a.*a.*b",
    r"[a-z]+\.[a-z]+\.[a-z]+\.[a-z_]+(?:_v\d+)?", r"shop\.(\w+)\.send_\w+(_v\d+)?",
    r"[a-z]+A[a-z]+A[a-z]+A[a-z]+",
])
def test_ordinary_regexes_are_accepted(regex: str) -> None:
    assert parse_pattern(f"re:{regex}").kind is Kind.REGEX


@pytest.mark.parametrize("regex", [r".*a.*a.*b", r"\w+\w+\w+b", "a?" * 19 + "a{19}"])
def test_the_worst_accepted_regexes_match_a_long_name_quickly(regex: str) -> None:
    """Quantifiers in a row at the limit, on a 200-character name that almost matches. A
    hang guard, not a timing goal."""
    pattern = parse_pattern(f"re:{regex}")
    started = time.perf_counter()
    assert not pattern.matches("a" * 200)
    assert time.perf_counter() - started < 5.0


@pytest.mark.parametrize("depth", [498, 1000, 5000])
def test_a_regex_nested_hundreds_of_groups_deep_is_a_located_error_not_a_crash(
        depth: int) -> None:
    """CPython's regex parser recurses per group: 1000 nested groups raised RecursionError."""
    [line] = problems(f"version: 1\npolicies:\n  - match: 're:{'(' * depth}a{')' * depth}'\n")
    assert line.startswith("policies.yaml:3:12: policies[0].match[0]: ")
    assert line.endswith("nests too deeply") or "at most 1000 characters" in line


@pytest.mark.parametrize("pattern", ["re:" + "(?:ab|cd)" * 200, "shop." + "x" * 1000 + ".*",
                                     "a" * 1001])
def test_a_pattern_longer_than_the_limit_is_refused_before_it_is_compiled(pattern: str) -> None:
    """Compiling and checking are linear, but a 5 MB regex still took a minute."""
    [line] = problems(f"version: 1\npolicies:\n  - match: '{pattern}'\n")
    assert line.startswith("policies.yaml:3:12: policies[0].match[0]: a task-name pattern may "
                           "be at most 1000 characters, got ")
