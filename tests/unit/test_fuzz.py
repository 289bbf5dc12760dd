"""Fuzzing the loader: any input gives a valid model or a located PolicyFileError, never
another exception."""

from __future__ import annotations

from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from celery_policies import Policies, PolicyFileError, parse_policies
from celery_policies.model import PolicyFile, PolicySettings
from tests.conftest import EXAMPLE

KEYS = sorted({*PolicySettings.model_fields, *PolicyFile.model_fields, "match", "name", "when",
               "dead_letter", "task", "queue", "dsn", "max_length", "interval_start"})
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-10, 10**6), st.floats(allow_nan=True),
    st.sampled_from(["30s", "5m", "500ms", "0", "-1s", "unlimited", "full", "equal", "10/s",
                     "ConnectionError", "os.path", "shop.*", "re:(", "re:a+", "[x", "${HOME}",
                     "${MISSING}", "${X:-1}", "$$", "true", ""]),
    st.text(max_size=12),
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


def check_outcome(source: bytes | str) -> None:
    error: PolicyFileError | None = None
    try:
        result = parse_policies(source, file="policies.yaml", environ={"HOME": "/h", "X": "2"})
    except PolicyFileError as exc:  # any other exception fails the test
        error = exc
    if error is None:
        assert isinstance(result, Policies)
        assert result.model.version == 1
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


def test_example_file_is_valid() -> None:
    """The fuzzers start from a valid file, so a mutation-free run must load."""
    check_outcome(EXAMPLE_TEXT)
    assert parse_policies(EXAMPLE_TEXT).model.policies
