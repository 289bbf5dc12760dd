"""Every kind of bad input gets a located error: file:line:col: path: message."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from celery_policies import PolicyFileError, load_policies, parse_policies
from celery_policies.spec.loader import MAX_FILE_BYTES
from tests.conftest import load, problems


def test_yaml_syntax_error_points_at_the_broken_line() -> None:
    assert problems("""
        version: 1
        policies:
          - match: "shop.*
            max_retries: 3
    """) == ["policies.yaml:5:1: YAML syntax error: while scanning a quoted scalar "
             "found unexpected end of stream"]


def test_unknown_key_suggests_the_key_meant() -> None:
    assert problems("""
        version: 1
        policies:
          - match: shop.*
            time_limt: 30s
    """) == ["policies.yaml:4:5: policies[0].time_limt: unknown key 'time_limt' "
             "(did you mean 'time_limit'?)"]


def test_unknown_key_without_a_close_match_has_no_suggestion() -> None:
    assert problems("version: 1\nflavour: vanilla\n") == [
        "policies.yaml:2:1: flavour: unknown key 'flavour'"]


def test_bad_duration_names_the_value() -> None:
    assert problems("""
        version: 1
        policies:
          - match: shop.*
            time_limit: tenish
    """) == ["policies.yaml:4:17: policies[0].time_limit: expected a duration like 30s or 5m, "
             "got 'tenish'"]


@pytest.mark.parametrize("value", ["0", "-5s", "0s"])
def test_zero_or_negative_duration(value: str) -> None:
    [line] = problems(f"version: 1\ndefaults:\n  retry_deadline: {value}\n")
    assert line.startswith("policies.yaml:3:19: defaults.retry_deadline: a duration must be "
                           "more than zero")


@pytest.mark.parametrize(("key", "value", "message"), [
    ("acks_late", "maybe", "expected true or false, got 'maybe'"),
    ("max_retries", "-1", "expected a whole number >= 0 or 'unlimited', got -1"),
    ("max_retries", "2.5", "expected a whole number >= 0 or 'unlimited', got 2.5"),
    ("retry_jitter", "half", "expected one of full, equal, none, got 'half'"),
    ("rate_limit", "fast", "expected a rate like 10/s, 100/m or 1000/h, got 'fast'"),
    ("retry_backoff", "soon", "expected false, true or a base delay like 2s, got 'soon'"),
    ("autoretry_for", "[42]", "expected an exception class as a dotted import path "
                              "(requests.exceptions.ConnectionError) or a builtin name, got 42"),
    ("on_failure", "dead", "expected a list, got a string"),
    ("publish_retry_policy", "[1]", "expected a mapping, got a list"),
])
def test_wrong_types(key: str, value: str, message: str) -> None:
    [line] = problems(f"version: 1\npolicies:\n  - match: a\n    {key}: {value}\n")
    column = 7 + len(key)
    path = f"policies[0].{key}" + ("[0]" if key == "autoretry_for" else "")
    if key == "autoretry_for":
        column += 1
    assert line == f"policies.yaml:4:{column}: {path}: {message}"


def test_max_retries_null_is_refused_in_favour_of_unlimited() -> None:
    assert problems("version: 1\ndefaults:\n  max_retries: null\n") == [
        "policies.yaml:3:16: defaults.max_retries: expected a whole number >= 0 or 'unlimited', "
        "got null (write 'unlimited' to retry without limit)"]


def test_soft_time_limit_must_be_below_time_limit() -> None:
    assert problems("""
        version: 1
        policies:
          - match: reports.*
            time_limit: 1m
            soft_time_limit: 90s
    """) == ["policies.yaml:5:22: policies[0].soft_time_limit: must be shorter than "
             "time_limit (1m), got 1m30s"]


def test_backoff_cap_below_base_delay() -> None:
    assert problems("""
        version: 1
        defaults:
          retry_backoff: 10s
          retry_backoff_max: 5s
    """) == ["policies.yaml:4:22: defaults.retry_backoff_max: must not be below the "
             "retry_backoff base delay (10s), got 5s"]


def test_backoff_cap_below_base_in_retry_per_exception() -> None:
    [line] = problems("""
        version: 1
        defaults:
          retry_per_exception:
            TimeoutError: {retry_backoff: 1m, retry_backoff_max: 30s}
    """)
    assert line == ("policies.yaml:4:58: defaults.retry_per_exception.TimeoutError."
                    "retry_backoff_max: must not be below the retry_backoff base delay (1m), "
                    "got 30s")


def test_bad_glob() -> None:
    assert problems("version: 1\npolicies:\n  - match: 'shop.[abc'\n") == [
        "policies.yaml:3:12: policies[0].match[0]: bad glob 'shop.[abc': '[' at position 6 "
        "is never closed"]


def test_bad_regex_in_a_list_points_at_the_item() -> None:
    assert problems("version: 1\npolicies:\n  - match: [ok.*, 're:(']\n") == [
        "policies.yaml:3:19: policies[0].match[1]: bad regular expression '(': missing ), "
        "unterminated subpattern at position 0"]


def test_empty_match_list() -> None:
    assert problems("version: 1\npolicies:\n  - match: []\n") == [
        "policies.yaml:3:12: policies[0].match: expected at least one task-name pattern"]


def test_missing_match() -> None:
    assert problems("version: 1\npolicies:\n  - max_retries: 1\n") == [
        "policies.yaml:3:5: policies[0]: missing required key 'match'"]


def test_duplicate_policy_names() -> None:
    assert problems("""
        version: 1
        policies:
          - {name: payments, match: a}
          - {name: reports, match: b}
          - {name: payments, match: c}
    """) == ["policies.yaml:5:12: policies[2].name: duplicate policy name 'payments' "
             "(also policies[0])"]


def test_duplicate_keys_are_an_error_not_a_silent_overwrite() -> None:
    assert problems("""
        version: 1
        defaults:
          max_retries: 3
          max_retries: 5
    """) == ["policies.yaml:4:3: defaults.max_retries: duplicate key 'max_retries' "
             "(first at line 3)"]


def test_exception_that_cannot_be_imported() -> None:
    assert problems("""
        version: 1
        defaults:
          autoretry_for: [ConnectionError, nowhere_module.Boom]
          retry_per_exception:
            NoSuchBuiltinError: {max_retries: 1}
    """, import_exceptions=True) == [
        "policies.yaml:3:36: defaults.autoretry_for[1]: cannot import 'nowhere_module.Boom': "
        "No module named 'nowhere_module'",
        "policies.yaml:5:5: defaults.retry_per_exception.NoSuchBuiltinError: cannot import "
        "'NoSuchBuiltinError': builtins has no 'NoSuchBuiltinError'",
    ]


def test_name_that_is_not_an_exception_class() -> None:
    assert problems("version: 1\ndefaults:\n  autoretry_for: [os.path.join, int]\n",
                    import_exceptions=True) == [
        "policies.yaml:3:19: defaults.autoretry_for[0]: 'os.path.join' is not an exception class",
        "policies.yaml:3:33: defaults.autoretry_for[1]: 'int' is not an exception class",
    ]


def test_exception_paths_are_not_imported_unless_asked() -> None:
    policies = load("version: 1\ndefaults:\n  autoretry_for: [nowhere_module.Boom]\n")
    assert policies.model.defaults is not None
    assert policies.model.defaults.autoretry_for == ("nowhere_module.Boom",)


@pytest.mark.parametrize("version", ["2", "'1'", "1.0", "true"])
def test_version_other_than_1(version: str) -> None:
    [line] = problems(f"version: {version}\n")
    assert line.startswith("policies.yaml:1:10: version: this celery-policies reads version 1 "
                           "files, got ")


def test_missing_version() -> None:
    assert problems("policies: []\n") == ["policies.yaml:1:1: missing required key 'version'"]


@pytest.mark.parametrize("text", ["", "   \n", "# only a comment\n"])
def test_empty_file(text: str) -> None:
    assert problems(text) == [
        "policies.yaml:1:1: the file is empty (it needs at least 'version: 1')"]


@pytest.mark.parametrize(("text", "kind"), [("- a\n- b\n", "a list"), ("hello\n", "a string"),
                                            ("null\n", "null"), ("42\n", "a number")])
def test_file_that_is_not_a_mapping(text: str, kind: str) -> None:
    assert problems(text) == [
        f"policies.yaml:1:1: expected a mapping with 'version: 1' and 'policies:' at the top, "
        f"got {kind}"]


def test_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "policies.yaml"
    path.write_bytes(b"version: 1\ndefaults:\n  rate_limit: caf\xe9\n")
    with pytest.raises(PolicyFileError) as caught:
        load_policies(path)
    assert str(caught.value) == (f"{path}:3:18: the file is not UTF-8 text (byte 0xe9 at "
                                 "offset 38)")


def test_file_over_the_size_limit_is_not_read(tmp_path: Path) -> None:
    path = tmp_path / "policies.yaml"
    path.write_bytes(b"version: 1\n" + b"#" * MAX_FILE_BYTES)
    with pytest.raises(PolicyFileError) as caught:
        load_policies(path)
    assert str(caught.value) == (f"{path}:1:1: the file is {MAX_FILE_BYTES + 11} bytes; "
                                 f"a policy file may be at most {MAX_FILE_BYTES}")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyFileError, match=r"nope.yaml:1:1: cannot read the file: No such"):
        load_policies(tmp_path / "nope.yaml")


def test_billion_laughs_is_refused_quickly() -> None:
    lines = ["version: 1", "a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    [line] = problems("\n".join(lines) + "\n")
    assert "expand the document beyond 10000 nodes" in line


def test_small_aliases_and_merge_keys_work() -> None:
    policies = load("""
        version: 1
        defaults: &base
          max_retries: 2
          acks_late: true
        policies:
          - <<: *base
            match: a
            max_retries: 7
    """)
    policy = policies.model.policies[0]
    assert (policy.max_retries, policy.acks_late) == (7, True)


@pytest.mark.parametrize("tag", ["!!python/object/apply:os.system ['echo hi']",
                                 "!!python/name:os.system", "!custom thing",
                                 "!!binary aGVsbG8="])
def test_tags_that_construct_objects_are_refused(tag: str) -> None:
    [line] = problems(f"version: 1\ndefaults:\n  rate_limit: {tag}\n")
    assert line.startswith("policies.yaml:3:15: defaults.rate_limit: YAML tag ")
    assert "is not allowed: a policy file holds plain values only" in line


def test_missing_environment_variable() -> None:
    assert problems("version: 1\nsentry:\n  dsn: ${SENTRY_DSN}\n", environ={}) == [
        "policies.yaml:3:8: sentry.dsn: environment variable SENTRY_DSN is not set "
        "(write ${SENTRY_DSN:-default} to give a default)"]


def test_environment_interpolation_with_defaults_and_escapes() -> None:
    policies = load("""
        version: 1
        defaults:
          max_retries: ${RETRIES}
          time_limit: ${LIMIT:-5m}
        sentry:
          dsn: "https://key@$${HOST}/${PROJECT}"
    """, environ={"RETRIES": "4", "PROJECT": "7"})
    assert policies.model.defaults is not None
    assert policies.model.defaults.max_retries == 4
    assert policies.model.defaults.time_limit == 300.0
    assert policies.model.sentry is not None
    assert policies.model.sentry.dsn == "https://key@${HOST}/7"


def test_every_problem_is_reported_at_once_in_file_order() -> None:
    lines = problems("""
        version: 1
        defaults:
          time_limit: soon
        policies:
          - match: a
            acks_late: perhaps
          - match: 'b['
            max_retries: lots
    """)
    assert [line.split(": ")[0] for line in lines] == [
        "policies.yaml:3:15", "policies.yaml:6:16", "policies.yaml:7:12", "policies.yaml:8:18"]


def test_error_exposes_the_first_location() -> None:
    with pytest.raises(PolicyFileError) as caught:
        load("version: 1\ndefaults:\n  time_limit: soon\n")
    error = caught.value
    assert (error.path, error.line, error.column, error.doc_path) == (
        "policies.yaml", 3, 15, ("defaults", "time_limit"))
    assert error.message == "expected a duration like 30s or 5m, got 'soon'"


def merge_bomb(keys: int, references: int) -> str:
    """A ~140 KB file whose one merge key lists a big anchored mapping ``references`` times."""
    lines = ["version: 1", "big: &big"]
    lines += [f"  k{i}: {i}" for i in range(keys)]
    lines += ["policies:", "  - match: a", "    <<: [" + ", ".join(["*big"] * references) + "]"]
    return "\n".join(lines) + "\n"


def test_merge_keys_count_against_the_alias_budget() -> None:
    """Merging a 9,000-key mapping 8,000 times once took seconds; now it is refused at the
    merge key, quickly."""
    text = merge_bomb(9000, 8000)
    started = time.perf_counter()
    with pytest.raises(PolicyFileError) as caught:
        parse_policies(text, file="policies.yaml")
    elapsed = time.perf_counter() - started
    assert [str(p) for p in caught.value.problems] == [
        "policies.yaml:9005:5: policies[0]: aliases and merge keys ('<<') expand the document "
        "beyond 10000 nodes; refusing it (a 'billion laughs' document?)"]
    assert elapsed < 5.0  # a hang guard only; benchmarks/ has no timing goal for this


def test_a_merge_within_the_budget_still_works() -> None:
    policies = load("version: 1\ndefaults: &base {max_retries: 2}\npolicies:\n"
                    "  - {match: a, <<: [" + ", ".join(["*base"] * 50) + "]}\n")
    assert policies.model.policies[0].max_retries == 2


def test_merge_of_a_mapping_that_itself_merges_takes_its_keys() -> None:
    """YAML's merge is transitive: the keys a source mapping merged are merged too."""
    policies = load("""
        version: 1
        defaults: &base {max_retries: 2, acks_late: true}
        policies:
          - &more {<<: *base, match: b, max_retries: 5}
          - <<: *more
            match: a
    """)
    policy = policies.model.policies[1]
    assert (policy.max_retries, policy.acks_late) == (5, True)


def test_a_merge_that_contains_itself_is_refused() -> None:
    [line] = problems("""
        version: 1
        defaults: &loop
          acks_late: true
          <<: *loop
        policies: []
    """)
    assert "recursive alias" in line


@pytest.mark.parametrize(("text", "environ", "expected"), [
    ("${A:-${B}}", {"B": "3"}, 3),
    ("${A:-${B}}", {"A": "4", "B": "3"}, 4),
    ("${A:-${B}}", {"A": "4"}, 4),
    ("${A:-${B:-5}}", {}, 5),
    ("${A:-${B:-${C:-6}}}", {"C": "7"}, 7),
    ("${A:-1$$}", {}, None),
])
def test_nested_defaults_take_the_first_variable_set(text: str, environ: dict[str, str],
                                                     expected: int | None) -> None:
    if expected is None:
        [line] = problems(f"version: 1\ndefaults:\n  max_retries: '{text}'\n", environ=environ)
        assert line.endswith("expected a whole number >= 0 or 'unlimited', got '1$'")
        return
    policies = load(f"version: 1\ndefaults:\n  max_retries: '{text}'\n", environ=environ)
    assert policies.model.defaults is not None
    assert policies.model.defaults.max_retries == expected


def test_a_nested_default_whose_variable_is_unset_names_it() -> None:
    assert problems("version: 1\nsentry:\n  dsn: ${DSN:-${FALLBACK}}\n", environ={}) == [
        "policies.yaml:3:8: sentry.dsn: environment variable FALLBACK is not set "
        "(write ${FALLBACK:-default} to give a default)"]


@pytest.mark.parametrize(("text", "message"), [
    ("${A:-${B}", "unclosed '${' in '${A:-${B}'"),
    ("${A:-${B:-x}", "unclosed '${' in '${A:-${B:-x}'"),
    ("${A:-${B:-${C:-${D:-${E:-${F:-x}}}}}}", "'${' nests deeper than 4 levels"),
    ("${A:-${9}}", "bad environment variable reference '${9}'"),
])
def test_broken_nested_references_are_located_errors(text: str, message: str) -> None:
    [line] = problems(f"version: 1\nsentry:\n  dsn: '{text}'\n", environ={})
    assert line.startswith("policies.yaml:3:8: sentry.dsn: ")
    assert message in line


@pytest.mark.parametrize("value", ["99999999999d", "1.0e+308", "1" + "0" * 400, "400d",
                                   "31536001"])
def test_a_duration_above_the_upper_bound_is_a_located_error(value: str) -> None:
    [line] = problems(f"version: 1\ndefaults:\n  retry_backoff: {value}\n")
    assert line.startswith("policies.yaml:3:18: defaults.retry_backoff: ")
    assert "at most 365d (31536000 seconds)" in line


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", "-1.0e+308", "-99999999999d"])
def test_infinite_nan_and_negative_durations_are_located_errors(value: str) -> None:
    [line] = problems(f"version: 1\ndefaults:\n  time_limit: {value}\n")
    assert line.startswith("policies.yaml:3:15: defaults.time_limit: ")


def test_a_number_too_big_for_a_float_is_a_located_error_not_a_crash() -> None:
    """float() of a 400-digit YAML int raises OverflowError, which once escaped the loader."""
    [line] = problems(f"version: 1\ndefaults:\n  time_limit: 1{'0' * 400}\n")
    assert line.startswith("policies.yaml:3:15: defaults.time_limit: a duration may be at most "
                           "365d (31536000 seconds), got 1000000")


@pytest.mark.parametrize("block", [False, True])
def test_merges_nested_hundreds_deep_are_a_located_error_not_a_crash(block: bool) -> None:
    """Each '<<' of a '<<' was followed by recursion: 990 of them raised RecursionError."""
    depth = 990
    if block:
        text = "version: 1\ndefaults:\n" + "".join(
            "  " * (i + 1) + "<<:\n" for i in range(depth)) + "  " * (depth + 1) + "x: 1\n"
    else:
        text = "version: 1\ndefaults: " + "{<<: " * depth + "{x: 1}" + "}" * depth + "\n"
    [line] = problems(text)
    assert line.startswith("policies.yaml:")
    assert "merges ('<<') nest deeper than 64 levels" in line


def test_a_large_file_that_merges_a_base_into_every_policy_loads() -> None:
    """800 policies merging a 10-key base copy 8,000 keys: within the budget, counted once
    each (not once as a merged key and again as a repeated value)."""
    base = ("defaults: &base {acks_late: true, max_retries: 2, retry_backoff: 1s, "
            "retry_backoff_max: 1m, retry_jitter: full, time_limit: 1m, soft_time_limit: 50s, "
            "reject_on_worker_lost: true, acks_on_failure_or_timeout: true, "
            "default_retry_delay: 5s}\n")
    policies = "".join(f"  - {{<<: *base, match: t{i}}}\n" for i in range(800))
    loaded = load("version: 1\n" + base + "policies:\n" + policies)
    assert len(loaded.model.policies) == 800
    assert loaded.model.policies[-1].retry_backoff_max == 60.0
