"""The commands, through click's CliRunner: exit codes and what a person reads."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from celery_policies.cli import policies
from celery_policies.tools.schema import render_markdown
from tests.conftest import EXAMPLE, ROOT

EXAMPLE_TASKS = ["shop.billing.charge_card", "shop.billing.notify_payment_team",
                 "shop.billing.refund", "shop.emails.send_newsletter", "shop.emails.send_receipt",
                 "shop.reports.build_monthly_report", "shop.reports.render_archive"]


def run(*args: str) -> Result:
    return CliRunner().invoke(policies, list(args), catch_exceptions=False)


def test_check_accepts_the_example_file() -> None:
    result = run("check", str(EXAMPLE))
    assert result.exit_code == 0
    assert result.stdout == f"{EXAMPLE}: valid, 5 policies\n"


def test_check_lists_every_problem_and_exits_1(policy_file: Callable[[str], Path]) -> None:
    path = policy_file("""
        version: 1
        defaults:
          time_limit: tenish
          acks_lat: true
    """)
    result = run("check", str(path))
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"{path}:3:15: defaults.time_limit: expected a duration like 30s or 5m, got 'tenish'",
        f"{path}:4:3: defaults.acks_lat: unknown key 'acks_lat' (did you mean 'acks_late'?)",
        f"2 problems in {path}",
    ]


def test_check_of_a_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    result = run("check", str(tmp_path / "nope.yaml"))
    assert result.exit_code == 2
    assert "does not exist" in result.stderr


def test_check_with_the_app_finds_nothing_to_warn_about_in_the_example() -> None:
    result = run("check", str(EXAMPLE), "--app", "examples.shop", "--strict")
    assert (result.exit_code, result.stderr) == (0, "")


def test_check_with_the_app_warns_about_dead_patterns_and_tells_of_uncovered_tasks(
        policy_file: Callable[[str], Path]) -> None:
    path = policy_file("""
        version: 1
        policies:
          - match: ["shop.billing.*", "shop.biling.*"]
    """)
    result = run("check", str(path), "--app", "examples.shop")
    assert result.exit_code == 0
    uncovered = [name for name in EXAMPLE_TASKS if "billing" not in name]
    assert result.stderr.splitlines() == [
        f"{path}:2:1: CP115 info: no policy matches ({len(uncovered)} tasks: "
        f"{', '.join(uncovered)}): they get no setting from this file; add a policy if they "
        "need their own",
        f"{path}:3:31: CP114 warning: pattern 'shop.biling.*' matches no registered task: a "
        "renamed or removed task, or a typo: the policy applies to nothing through it; correct "
        "the pattern or remove it"]
    assert result.stdout == f"{path}: valid, 1 policy, 1 warning, 1 info\n"
    strict = run("check", str(path), "--app", "examples.shop", "--strict")
    assert strict.exit_code == 1
    assert strict.stderr.splitlines()[-1] == "failing because of warnings (--strict)"


def test_check_strict_does_not_fail_on_info_findings(policy_file: Callable[[str], Path]) -> None:
    path = policy_file("""
        version: 1
        policies:
          - match: "shop.billing.*"
    """)
    result = run("check", str(path), "--app", "examples.shop", "--strict")
    assert result.exit_code == 0
    assert " CP115 info: " in result.stderr
    assert result.stdout == f"{path}: valid, 1 policy, 1 info\n"


def test_check_with_the_app_warns_when_merged_layers_put_the_soft_limit_above_the_hard(
        policy_file: Callable[[str], Path]) -> None:
    path = policy_file("""
        version: 1
        defaults: {time_limit: 5m, soft_time_limit: 4m}
        policies:
          - match: "shop.*"
          - match: shop.emails.send_receipt
            time_limit: 1m
    """)
    result = run("check", str(path), "--app", "examples.shop")
    assert result.stderr.splitlines() == [
        f"{path}:6:5: CP117 warning: soft_time_limit 4m from defaults ({path}:2) is not below "
        f"time_limit 1m from policies[1] ({path}:5) (1 task: shop.emails.send_receipt): the "
        "hard limit kills the task before the soft one can raise SoftTimeLimitExceeded, so the "
        "task never gets to clean up; keep soft_time_limit below time_limit"]
    assert run("check", str(path), "--app", "examples.shop", "--strict").exit_code == 1


def test_check_with_a_pool_warns_about_the_time_limits_it_ignores(
        policy_file: Callable[[str], Path]) -> None:
    path = policy_file("""
        version: 1
        policies:
          - match: "shop.reports.*"
            time_limit: 10m
            soft_time_limit: 9m
    """)
    assert run("check", str(path), "--pool", "prefork", "--strict").exit_code == 0
    result = run("check", str(path), "--pool", "gevent", "--strict")
    assert result.exit_code == 1
    assert result.stderr.splitlines()[0] == (
        f"{path}:5:5: CP103 warning: the gevent pool does not enforce soft_time_limit 9m: the "
        "limit is silently never applied: only prefork enforces both limits, gevent "
        "time_limit only (celery#1958, #9203, #8395); run these tasks on a prefork worker, or "
        "do not rely on the limit")
    assert result.stdout == f"{path}: valid, 1 policy, 1 warning\n"


def test_check_refuses_an_unknown_pool(policy_file: Callable[[str], Path]) -> None:
    path = policy_file("version: 1\n")
    result = run("check", str(path), "--pool", "forky")
    assert result.exit_code == 2
    assert "'forky' is not one of" in result.stderr


def test_check_without_an_app_lints_each_policy_over_the_defaults(
        policy_file: Callable[[str], Path]) -> None:
    path = policy_file("""
        version: 1
        defaults: {max_retries: unlimited}
        policies:
          - match: "a.*"
            retry_deadline: 1h
          - match: "b.*"
    """)
    result = run("check", str(path))
    assert result.exit_code == 0
    assert result.stderr.splitlines() == [
        f"{path}:2:12: CP108 warning: max_retries is unlimited and there is no retry_deadline "
        "(tasks no policy matches, tasks of policies[1]): a task that keeps failing retries "
        "forever: its retries pile up on the broker and its failure routes never run "
        "(celery#1875); add a retry_deadline, or give max_retries a number"]
    assert run("check", str(path), "--strict").exit_code == 1


def test_check_with_the_app_imports_exception_classes(policy_file: Callable[[str], Path]) -> None:
    path = policy_file("""
        version: 1
        defaults:
          autoretry_for: [examples.shop.errors.GatewayTimeout, examples.shop.errors.Nope]
    """)
    assert run("check", str(path)).exit_code == 0
    result = run("check", str(path), "--app", "examples.shop")
    assert result.exit_code == 1
    assert result.stderr.splitlines()[0] == (
        f"{path}:3:56: defaults.autoretry_for[1]: cannot import 'examples.shop.errors.Nope': "
        "module 'examples.shop.errors' has no 'Nope'")
    assert run("check", str(path), "--import").exit_code == 1


def test_check_with_an_app_that_cannot_be_loaded_is_a_usage_error() -> None:
    result = run("check", str(EXAMPLE), "--app", "no_such_module_here")
    assert result.exit_code == 2
    assert "cannot load app 'no_such_module_here'" in result.stderr


def explain_json(*args: str) -> dict[str, dict[str, object]]:
    result = run("explain", *args, "--format", "json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    return {task["name"]: task for task in document["tasks"]}


def test_explain_shows_every_example_task_with_its_sources() -> None:
    tasks = explain_json(str(EXAMPLE), "--app", "examples.shop")
    assert sorted(tasks) == EXAMPLE_TASKS
    charge = tasks["shop.billing.charge_card"]
    assert charge["matched"] == ["network", "payments"]
    settings = charge["settings"]
    assert isinstance(settings, dict)
    assert settings["time_limit"] == {"value": 30.0,
                                      "source": f'policies[1] "payments" ({EXAMPLE}:30)'}
    assert settings["max_retries"] == {"value": 4,
                                       "source": f'policies[1] "payments" ({EXAMPLE}:30)'}
    assert settings["retry_backoff_max"]["value"] == 30.0
    assert settings["acks_on_failure_or_timeout"] == {"value": True, "source": "celery default"}
    assert settings["on_failure"]["value"] == [
        {"task": "shop.billing.notify_payment_team", "when": ["examples.shop.errors.CardDeclined"]},
        {"dead_letter": True}]
    refund = tasks["shop.billing.refund"]["settings"]
    assert isinstance(refund, dict)
    assert refund["max_retries"]["source"] == f"policies[4] ({EXAMPLE}:69)"


def test_explain_table_names_the_winning_policy() -> None:
    result = run("explain", str(EXAMPLE), "--app", "examples.shop", "shop.reports.*")
    assert result.exit_code == 0
    assert "shop.reports.build_monthly_report" in result.stdout
    assert "shop.billing" not in result.stdout
    row = next(line for line in result.stdout.splitlines() if "max_redeliveries" in line)
    assert re.search(r"max_redeliveries\s*│\s*2\s*│\s*policies\[2\] \"reports\"", row)


def test_explain_says_when_the_file_overrides_task_code(policy_file: Callable[[str], Path]) -> None:
    path = policy_file("""
        version: 1
        policies:
          - match: "code.*"
            autoretry_for: [ConnectionError]
            max_retries: 2
    """)
    tasks = explain_json(str(path), "--app", "tests.support.codeapp")
    fetch = tasks["code.fetch"]["settings"]
    assert isinstance(fetch, dict)
    assert fetch["autoretry_for"] == {
        "value": ["ConnectionError"], "source": f"policies[0] ({path}:3)",
        "overrides": {"value": ["TimeoutError"], "source": "task code"}}
    assert fetch["max_retries"]["overrides"] == {"value": 7, "source": "task code"}
    assert fetch["time_limit"] == {"value": 120.0, "source": "task code"}
    assert fetch["retry_backoff"] == {"value": 1.0, "source": "task code"}
    plain = tasks["code.plain"]["settings"]
    assert isinstance(plain, dict)
    assert plain["acks_late"] == {"value": True, "source": "app config (task_acks_late)"}
    assert "overrides" not in plain["max_retries"]


def test_explain_says_when_the_file_overrides_app_config(
        policy_file: Callable[[str], Path]) -> None:
    path = policy_file("version: 1\ndefaults:\n  acks_late: false\n")
    settings = explain_json(str(path), "--app", "tests.support.codeapp")["code.plain"]["settings"]
    assert isinstance(settings, dict)
    assert settings["acks_late"] == {
        "value": False, "source": f"defaults ({path}:2)",
        "overrides": {"value": True, "source": "app config (task_acks_late)"}}


def test_explain_without_an_app_takes_a_task_name() -> None:
    tasks = explain_json(str(EXAMPLE), "shop.reports.build_monthly_report")
    settings = tasks["shop.reports.build_monthly_report"]["settings"]
    assert isinstance(settings, dict)
    assert settings["max_redeliveries"]["value"] == 2
    assert settings["retry_backoff_max"] == {"value": 300.0, "source": f"defaults ({EXAMPLE}:10)"}
    assert run("explain", str(EXAMPLE)).exit_code == 2


def test_explain_without_an_app_refuses_a_pattern() -> None:
    result = run("explain", str(EXAMPLE), "shop.*")
    assert result.exit_code == 2
    assert "without --app, give one task name, not a pattern ('shop.*')" in result.stderr


def test_explain_table_says_no_limit_and_names_the_dead_letter_queue(
        policy_file: Callable[[str], Path]) -> None:
    path = policy_file("""
        version: 1
        dead_letter: {queue: dlq.payments}
        defaults:
          time_limit: null
          on_failure: [{dead_letter: true}]
    """)
    rows = {line.split("│")[1].strip(): line.split("│")[2].strip()
            for line in run("explain", str(path), "t").stdout.splitlines() if "│" in line}
    assert rows["time_limit"] == "none (no limit)"
    assert rows["soft_time_limit"] == "-"
    assert rows["on_failure"] == "dead letter to dlq.payments"


def parse_range(text: str) -> tuple[float, float]:
    units = {"s": 1, "m": 60, "h": 3600}

    def seconds(part: str) -> float:
        return sum(float(n) * units[u] for n, u in re.findall(r"([\d.]+)([smh])", part))

    low, _, high = text.partition(" - ")
    return (seconds(low), seconds(high or low))


def timeline(result: Result) -> list[list[str]]:
    return [[cell.strip() for cell in line.split("│")[1:-1]]
            for line in result.stdout.splitlines() if re.match(r"│\s+\d+ │", line)]


def test_simulate_delays_follow_the_backoff_arithmetic() -> None:
    """send_receipt on ProviderRateLimited: base 30s, cap 10m, equal jitter, 6 retries."""
    result = run("simulate", str(EXAMPLE), "--app", "examples.shop",
                 "--task", "shop.emails.send_receipt",
                 "--raise", "examples.shop.errors.ProviderRateLimited")
    assert result.exit_code == 0
    rows = timeline(result)
    assert [int(r[0]) for r in rows] == list(range(1, 8))
    low_start = high_start = 0.0
    for retries, row in enumerate(rows[:-1]):
        delay = min(600.0, 30.0 * 2**retries)
        assert parse_range(row[1]) == (low_start, high_start)
        assert parse_range(row[3]) == (delay / 2, delay)
        low_start, high_start = low_start + delay / 2, high_start + delay
    assert rows[-1][2] == "fails: max_retries reached, gives up"
    assert "Failure route: dead letter to queue shop.dead_letter" in result.stdout


def test_simulate_shows_the_routes_a_non_retryable_error_takes() -> None:
    result = run("simulate", str(EXAMPLE), "--app", "examples.shop",
                 "--task", "shop.billing.charge_card",
                 "--raise", "examples.shop.errors.CardDeclined")
    assert result.exit_code == 0
    assert [r[2] for r in timeline(result)] == ["fails: not retryable, gives up"]
    assert result.stdout.splitlines()[-2:] == [
        "Failure route: task shop.billing.notify_payment_team",
        "Failure route: dead letter to queue shop.dead_letter"]


def test_simulate_stops_at_the_deadline(policy_file: Callable[[str], Path]) -> None:
    path = policy_file("""
        version: 1
        defaults: {autoretry_for: [OSError], max_retries: unlimited, retry_backoff: 10s,
                   retry_jitter: none, retry_deadline: 1m}
    """)
    result = run("simulate", str(path), "--task", "t", "--raise", "ConnectionError")
    assert [r[2] for r in timeline(result)][-1] == (
        "fails: next attempt would start after retry_deadline, gives up")
    assert [parse_range(r[1])[0] for r in timeline(result)] == [0, 10, 30]
    assert "Failure routes: none" in result.stdout


def test_simulate_of_an_unknown_task_with_an_app_is_a_usage_error() -> None:
    result = run("simulate", str(EXAMPLE), "--app", "examples.shop", "--task", "shop.nope",
                 "--raise", "ValueError")
    assert result.exit_code == 2


def test_schema_is_json_schema_of_the_file() -> None:
    result = run("schema")
    document = json.loads(result.stdout)
    assert document["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert {"version", "defaults", "policies", "sentry", "dead_letter"} <= set(
        document["properties"])


def test_reference_in_the_docs_is_generated_from_the_models() -> None:
    """docs/reference.md is `celery-policies schema --format markdown`; regenerate on change."""
    assert (ROOT / "docs" / "reference.md").read_text(encoding="utf-8") == render_markdown()
    assert run("schema", "--format", "markdown").stdout == render_markdown()


def test_schema_file_in_the_docs_is_current() -> None:
    """docs/policies.schema.json is `celery-policies schema`; regenerate on change."""
    committed = (ROOT / "docs" / "policies.schema.json").read_text(encoding="utf-8")
    assert committed == run("schema").stdout


#: The policy files among the docs' YAML (docs/prometheus/ holds Prometheus rules).
DOC_POLICY_FILES = sorted(path for path in (ROOT / "docs").rglob("*.yaml")
                          if "prometheus" not in path.relative_to(ROOT / "docs").parts)


@pytest.mark.parametrize("path", DOC_POLICY_FILES, ids=str)
def test_yaml_files_in_the_docs_are_valid_unless_meant_to_fail(path: Path) -> None:
    result = run("check", str(path))
    assert result.exit_code == (1 if path.stem.startswith("invalid") else 0), result.output


def test_the_commands_run_as_a_celery_sub_command() -> None:
    """`celery -A app policies ...` works through the celery.commands entry point, with the
    app taken from -A."""
    result = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "examples.shop", "policies", "explain",
         str(EXAMPLE), "--format", "json"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    names = [task["name"] for task in json.loads(result.stdout)["tasks"]]
    assert names == EXAMPLE_TASKS


def test_yaml_in_the_readme_is_valid(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```yaml\n(.*?)```", readme, flags=re.DOTALL)
    assert blocks
    for number, block in enumerate(blocks):
        path = tmp_path / f"readme-{number}.yaml"
        path.write_text(block, encoding="utf-8")
        result = run("check", str(path))
        assert result.exit_code == 0, result.output


def test_simulate_says_when_jitter_decides_the_last_attempt(
        policy_file: Callable[[str], Path]) -> None:
    path = policy_file("""
        version: 1
        defaults: {autoretry_for: [OSError], max_retries: unlimited, retry_backoff: 10s,
                   retry_jitter: equal, retry_deadline: 40s}
    """)
    result = run("simulate", str(path), "--task", "t", "--raise", "OSError")
    assert [row[2] for row in timeline(result)] == [
        "fails, retries", "fails, retries",
        "fails, retries unless the deadline passes first (depends on jitter)",
        "fails: next attempt would start after retry_deadline, gives up"]
    assert "Gives up after attempt 3 to 4, depending on jitter and the deadline." in result.stdout
