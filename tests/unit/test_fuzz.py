"""Fuzzing the loader: any input gives a valid model or a located PolicyFileError, quickly,
never another exception. Generated input includes merge keys, regexes and huge durations; the
patterns of a file that loads are matched against task names too, so an accepted regex that
backtracks for ages fails the hang guard."""

from __future__ import annotations

import time
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from celery_policies import Policies, PolicyFileError, parse_policies
from celery_policies.spec.matching import Matcher
from celery_policies.spec.model import PolicyFile, PolicySettings
from tests.conftest import EXAMPLE

KEYS = sorted({*PolicySettings.model_fields, *PolicyFile.model_fields, "match", "name", "when",
               "dead_letter", "task", "queue", "dsn", "max_length", "interval_start"})
#: Regexes: catastrophic ones, safe ones, and any string over regex syntax.
REGEXES = st.one_of(
    st.sampled_from([r"re:(a+)+$", r"re:(\w+\.?)+_task", r"re:(?:\d\d|[0-9])+x",
                     r"re:(x?){30}x{30}", r"re:.*a.*a.*a.*b", r"re:shop\..*",
                     r"re:(shop|billing)\.\w+"]),
    st.text(alphabet="ab.\\w+*?()|[]{}12,^$:=!<>-", max_size=14).map("re:".__add__),
)
#: Durations far beyond any limit, and at it.
HUGE = st.one_of(
    st.sampled_from(["99999999999d", "365d", "366d", "31536000", "31536001", "1.0e+308",
                     "1" + "0" * 400, "1" * 400 + "ms", float("inf"), -float("inf")]),
    st.integers(-(10**400), 10**400), st.floats(min_value=1e7, allow_infinity=True),
)
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-10, 10**6), st.floats(allow_nan=True),
    st.sampled_from(["30s", "5m", "500ms", "0", "-1s", "unlimited", "full", "equal", "10/s",
                     "ConnectionError", "os.path", "shop.*", "re:(", "re:a+", "[x", "${HOME}",
                     "${MISSING}", "${X:-1}", "$$", "true", "", "${X:-${HOME}}",
                     "${MISSING:-${X:-3}}", "${A:-${B}", "${A:-${B:-${C:-${D:-${E}}}}}"]),
    st.text(max_size=12), REGEXES, HUGE,
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=8)), inner,
                        max_size=5),
    ),
    max_leaves=25,
)
EXAMPLE_TEXT = EXAMPLE.read_text(encoding="utf-8")
FUZZ_SETTINGS = settings(max_examples=1500, deadline=None,
                         suppress_health_check=[HealthCheck.too_slow])
#: Seconds one document may take to load and match: a hang guard, not a timing goal.
HANG_GUARD = 5.0
#: Task names that almost match many patterns: the worst case of a backtracking regex.
TASK_NAMES = ["a" * 60, "a" * 59 + "!", "shop.emails.send_receipt_for_order_12345_task",
              "x." * 30 + "!", "1" * 40 + "y", "b" * 60 + "a"]


def check_outcome(source: bytes | str) -> None:
    error: PolicyFileError | None = None
    started = time.perf_counter()
    try:
        result = parse_policies(source, file="policies.yaml", environ={"HOME": "/h", "X": "2"})
    except PolicyFileError as exc:  # any other exception fails the test
        error = exc
    if error is None:
        assert isinstance(result, Policies)
        assert result.model.version == 1
        Matcher(result).resolve_all(TASK_NAMES)
    assert time.perf_counter() - started < HANG_GUARD
    if error is None:
        return
    assert error.problems
    for problem in error.problems:
        assert problem.file == "policies.yaml"
        assert problem.line >= 1
        assert problem.column >= 1
        assert str(problem).startswith(f"policies.yaml:{problem.line}:{problem.column}: ")


@FUZZ_SETTINGS
@given(st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=6),
       st.lists(st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=6), max_size=4))
def test_generated_documents(top: dict[str, Any], policies: list[dict[str, Any]]) -> None:
    document = {"version": 1, **top, "policies": policies}
    check_outcome(yaml.safe_dump(document, allow_unicode=True))


@FUZZ_SETTINGS
@given(st.lists(st.tuples(st.integers(0, len(EXAMPLE_TEXT)), st.integers(0, 12),
                          st.text(alphabet=":-[]{}&*!|>'\"#%@`,?\n \t${}0a", max_size=6)),
                min_size=1, max_size=4))
def test_mutations_of_the_example_file(edits: list[tuple[int, int, str]]) -> None:
    text = EXAMPLE_TEXT
    for position, remove, insert in edits:
        at = min(position, len(text))
        text = text[:at] + insert + text[at + remove:]
    check_outcome(text)


@FUZZ_SETTINGS
@given(st.binary(max_size=200))
def test_arbitrary_bytes(raw: bytes) -> None:
    check_outcome(b"version: 1\n" + raw)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 6000), st.lists(st.integers(0, 3000), min_size=1, max_size=3),
       st.booleans())
def test_merge_keys(anchor_keys: int, references: list[int], nested: bool) -> None:
    """``<<`` merges of a big anchored mapping, listed many times, in several policies."""
    lines = ["version: 1", "defaults: &base", "  max_retries: 2"]
    lines += [f"  k{i}: {i}" for i in range(anchor_keys)]
    if nested:
        lines += ["dead_letter: &more", "  <<: *base", "  queue: q"]
    lines.append("policies:")
    for index, count in enumerate(references):
        merged = ", ".join(["*more" if nested and i % 2 else "*base" for i in range(count)])
        lines += [f"  - match: t{index}", f"    <<: [{merged}]"]
    check_outcome("\n".join(lines) + "\n")


def test_example_file_is_valid() -> None:
    """The fuzzers start from a valid file, so a mutation-free run must load."""
    check_outcome(EXAMPLE_TEXT)
    assert parse_policies(EXAMPLE_TEXT).model.policies
