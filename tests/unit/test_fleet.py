"""``fleet``: which workers drift, judged from their answers; the command's exit codes."""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from click.testing import CliRunner, Result
from kombu.exceptions import OperationalError

from celery_policies import install, load_policies
from celery_policies.cli import policies
from celery_policies.tools.fleet import Answer, Reference, file_reference, judge, majority
from celery_policies.worker.inspect import policies as inspect_policies
from tests.conftest import EXAMPLE
from tests.unit.test_runtime import make_app

# The module, not the command that ``celery_policies.cli`` exports under the same name.
fleet_command = importlib.import_module("celery_policies.cli.fleet")

A, B, C = "aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb", "cccccccccccccccc"


def answers(*prints: str | None) -> list[Answer]:
    """One answer per fingerprint, from workers w1@h, w2@h, ..."""
    return [Answer(f"w{i}@h", fp, "policies.yaml" if fp else None)
            for i, fp in enumerate(prints, 1)]


def statuses(*prints: str | None, **options: Any) -> list[str]:
    return [w.status for w in judge(answers(*prints), **options).workers]


# -- the verdict --------------------------------------------------------------------------

def test_the_worker_that_differs_from_the_majority_drifts() -> None:
    verdict = judge(answers(A, B, A))

    assert [w.status for w in verdict.workers] == ["ok", "drift", "ok"]
    assert not verdict.ok
    assert verdict.summary() == (f"1 of 3 workers drift from fingerprint {A} "
                                 "(the majority, 2 of 3 workers): w2@h")


def test_the_most_common_fingerprint_is_expected_even_without_an_absolute_majority() -> None:
    assert statuses(A, A, B, C) == ["ok", "ok", "drift", "drift"]


def test_a_tie_has_no_majority_and_fails_every_worker_in_it() -> None:
    verdict = judge(answers(A, B, B, A))

    assert {w.status for w in verdict.workers} == {"no majority"}
    assert not verdict.ok
    assert verdict.summary() == (f"no majority: 2 fingerprints ({A}, {B}) are each applied by "
                                 "2 workers: w1@h, w2@h, w3@h, w4@h")


def test_a_file_decides_even_against_the_majority() -> None:
    verdict = judge(answers(A, A, B), Reference(B, "policies.yaml", "policies.yaml"))

    assert [w.status for w in verdict.workers] == ["drift", "drift", "ok"]
    assert verdict.summary() == (f"2 of 3 workers drift from fingerprint {B} (policies.yaml): "
                                 "w1@h, w2@h")


def test_a_worker_without_policies_drifts_and_does_not_vote() -> None:
    verdict = judge(answers(None, None, A))

    assert [w.status for w in verdict.workers] == ["no policies", "no policies", "ok"]
    assert verdict.reference.fingerprint == A
    assert verdict.summary().endswith(": w1@h (no policies), w2@h (no policies)")


def test_when_no_worker_has_policies_none_is_ok() -> None:
    verdict = judge(answers(None, None))

    assert not verdict.ok
    assert verdict.summary() == ("no worker has policies loaded: w1@h (no policies), "
                                 "w2@h (no policies)")


def test_a_worker_without_the_command_answers_an_error_and_drifts() -> None:
    # What kombu's pidbox answers for a command the worker does not know.
    odd = Answer.from_reply("old@h", {"error": "KeyError('policies')"})
    verdict = judge([*answers(A, A), odd])

    assert odd.error == "KeyError('policies')"
    assert [w.status for w in verdict.workers] == ["error", "ok", "ok"]
    assert verdict.summary().endswith(": old@h (error)")


def test_workers_that_agree_pass() -> None:
    verdict = judge(answers(A, A, A), expect=3)

    assert verdict.ok
    assert verdict.summary() == f"3 of 3 workers apply fingerprint {A}"
    assert judge(answers(A), Reference(A, "p.yaml", "p.yaml")).summary() == (
        f"1 of 1 worker applies fingerprint {A} (p.yaml)")


def test_fewer_workers_than_expected_fail_even_when_they_agree() -> None:
    verdict = judge(answers(A, A), expect=3, timeout=2.5)

    assert not verdict.ok
    assert verdict.shortfall == 1
    assert verdict.summary() == "expected 3 workers, 2 answered within 2.5s"


def test_a_named_worker_that_does_not_answer_fails() -> None:
    verdict = judge(answers(A, A), names=["w1@h", "w9@h", "w2@h"])

    assert verdict.missing == ("w9@h",)
    assert verdict.summary() == "did not answer within 1s: w9@h"


def test_no_answer_at_all_fails() -> None:
    verdict = judge([], timeout=3)

    assert not verdict.ok
    assert verdict.summary() == "no worker answered within 3s"
    assert judge([], names=["a@h"]).summary() == "no worker answered within 1s (a@h)"


def test_every_reason_to_fail_is_in_the_one_line_summary() -> None:
    summary = judge(answers(A, A, B), expect=5, names=()).summary()

    assert summary == (f"1 of 3 workers drift from fingerprint {A} (the majority, 2 of 3 "
                       "workers): w3@h; expected 5 workers, 3 answered within 1s")


def test_the_json_verdict_carries_every_worker_and_the_reasons() -> None:
    data = judge(answers(A, B, A), expect=4).to_json()

    assert data["ok"] is False
    assert data["expected"] == {"fingerprint": A, "source": "the majority, 2 of 3 workers"}
    assert [(w["worker"], w["status"]) for w in data["workers"]] == [
        ("w1@h", "ok"), ("w2@h", "drift"), ("w3@h", "ok")]
    assert data["shortfall"] == 1
    assert data["summary"].endswith("expected 4 workers, 3 answered within 1s")


def test_majority_counts_only_fingerprints() -> None:
    assert majority(answers(None, A)).fingerprint == A
    assert majority(answers(A, B)).fingerprint is None
    assert majority([]).source == "no worker has policies loaded"


# -- what workers answer, and what the file gives -----------------------------------------

def test_the_file_reference_is_what_a_worker_that_applied_the_file_reports() -> None:
    app = make_app()
    runtime = install(app)
    policies_ = load_policies(EXAMPLE)
    runtime.apply(policies_)

    state = SimpleNamespace(consumer=SimpleNamespace(app=app))
    report = inspect_policies(state, tasks=False)
    assert report["fingerprint"] == file_reference(app, policies_).fingerprint
    assert report["file"] == str(EXAMPLE)
    assert "tasks" not in report
    assert set(inspect_policies(state)["tasks"]) == set(runtime.tasks)


def test_a_worker_without_the_plugin_installed_reports_no_fingerprint() -> None:
    state = SimpleNamespace(consumer=SimpleNamespace(app=make_app()))
    answer = Answer.from_reply("w@h", inspect_policies(state, tasks=False))

    assert answer.fingerprint is None
    assert answer.error is None
    assert judge([answer]).workers[0].status == "no policies"


# -- the command --------------------------------------------------------------------------

def run(*args: str) -> Result:
    return CliRunner().invoke(policies, ["fleet", "--app", "tests.support.codeapp", *args],
                              catch_exceptions=False)


@pytest.fixture
def replies(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Make the command receive these answers instead of asking a broker."""

    def give(*given: Answer) -> None:
        monkeypatch.setattr(fleet_command, "ask", lambda *_, **__: list(given))

    return give


def test_the_command_marks_the_drifting_worker_and_exits_1(replies: Callable[..., None]) -> None:
    replies(*answers(A, B, A))
    result = run()

    assert result.exit_code == 1
    row = next(line for line in result.stdout.splitlines() if "w2@h" in line)
    assert "DRIFT" in row
    assert sum(" ok " in line for line in result.stdout.splitlines()) == 2
    assert result.stderr.endswith("(the majority, 2 of 3 workers): w2@h\n")


def test_the_command_exits_0_when_every_worker_agrees(replies: Callable[..., None]) -> None:
    replies(*answers(A, A))
    result = run("--expect", "2")

    assert result.exit_code == 0
    assert result.stdout.endswith(f"2 of 2 workers apply fingerprint {A}\n")


def test_the_json_output_is_json_alone_and_keeps_the_exit_code(
        replies: Callable[..., None]) -> None:
    replies(*answers(A, B, A))
    result = run("--json")

    assert result.exit_code == 1
    verdict = json.loads(result.stdout)
    assert [w["status"] for w in verdict["workers"]] == ["ok", "drift", "ok"]
    assert result.stderr == f"Error: {verdict['summary']}\n"


def test_with_no_worker_on_the_broker_nothing_answers_and_the_command_fails() -> None:
    result = run("--timeout", "0.1")  # codeapp's broker is memory://: no worker listens

    assert result.exit_code == 1
    assert result.stderr == "Error: no worker answered within 0.1s\n"


def test_an_unreachable_broker_fails_with_its_address(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_: object, **__: object) -> None:
        raise OperationalError("[Errno 111] Connection refused")

    monkeypatch.setattr(fleet_command, "ask", refuse)
    result = run()

    assert result.exit_code == 1
    assert result.stderr.startswith("Error: cannot reach the broker at memory://")


def test_expect_and_workers_do_not_combine() -> None:
    result = run("--expect", "2", "--workers", "a@h,b@h")

    assert result.exit_code == 2
    assert "give --expect or --workers, not both" in result.stderr


def test_an_invalid_file_is_a_usage_error_listing_its_problems(
        policy_file: Callable[[str], Path]) -> None:
    path = policy_file("""
        version: 1
        defaults:
          time_limit: tenish
    """)
    result = run("--file", str(path))

    assert result.exit_code == 2
    assert f"{path}:3:15: defaults.time_limit: " in result.stderr
    assert "Invalid value for '--file'" in result.stderr


def test_the_command_needs_an_app() -> None:
    result = CliRunner().invoke(policies, ["fleet"])

    assert result.exit_code == 2
    assert "this command needs --app MODULE" in result.stderr
