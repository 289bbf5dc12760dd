"""The worker's retry wrapper and ``simulate`` give up alike: same order of checks, same reason.

Each case simulates a task that keeps failing, then runs the real wrapper (``wrap_run``) at
the timeline's last attempt: with the retries used by then and the time its start is
simulated at. What the wrapper does there, retry or give up and why, is that step's outcome.
"""

from __future__ import annotations

from dataclasses import dataclass
from time import time
from typing import Any

import pytest
from celery import Celery

from celery_policies.headers import FIRST_ATTEMPT_HEADER
from celery_policies.spec.backoff import RetrySettings, Step, simulate
from celery_policies.spec.matching import Matcher
from celery_policies.worker.retrying import wrap_run
from tests.conftest import load


def settings_for(defaults: str) -> RetrySettings:
    resolved = Matcher(load(f"version: 1\ndefaults: {{{defaults}}}\n")).resolve("proj.failing")
    return RetrySettings.from_values(resolved.get)


@dataclass
class Retried(Exception):
    """What the stand-in for ``Task.retry`` raises: the countdown the wrapper chose."""

    countdown: float


class Wrapped:
    """A task that raises ``exc_type`` every time, under the worker's retry wrapper."""

    def __init__(self, settings: RetrySettings, exc_type: type[Exception],
                 monkeypatch: pytest.MonkeyPatch) -> None:
        app = Celery("give-up", set_as_current=False)
        self.reasons: list[str] = []

        @app.task(bind=True, name="proj.failing", shared=False)
        def failing(task: Any) -> None:
            raise exc_type("failed")

        def gave_up(task: Any, exc: BaseException, reason: str, retries: int) -> None:
            self.reasons.append(reason)

        def retry(**options: Any) -> Retried:
            return Retried(options["countdown"])  # the wrapper raises what retry() returns

        wrap_run(failing, lambda: settings, gave_up)
        monkeypatch.setattr(failing, "retry", retry)
        self.task, self.exc_type = failing, exc_type

    def outcome(self, retries: int, elapsed: float) -> tuple[str, float | None]:
        """The wrapper's outcome for a failure after ``retries`` retries, ``elapsed`` seconds
        after the first attempt started: ``("retry", countdown)`` or ``(reason, None)``."""
        self.reasons.clear()
        self.task.push_request(id="0f0f", retries=retries,
                               headers={FIRST_ATTEMPT_HEADER: time() - elapsed})
        try:
            self.task.run()
        except Retried as retried:
            return "retry", retried.countdown
        except self.exc_type:
            [reason] = self.reasons
            return reason, None
        finally:
            self.task.pop_request()
        raise AssertionError("the task's failure went nowhere")


#: Backoff 10 s without jitter: delays 10, 20, 40, 80 s; attempts start at 0, 10, 30, 70 s.
BACKOFF = "retry_backoff: 10s, retry_jitter: none"

CASES = [
    # (name, defaults, raised, attempts simulated, last step's outcome)
    ("retryable, retries left", f"autoretry_for: [OSError], max_retries: 3, {BACKOFF}",
     OSError, 3, "retry"),
    ("retryable, max_retries used", f"autoretry_for: [OSError], max_retries: 3, {BACKOFF}",
     OSError, 10, "max_retries"),
    ("max_retries 0", f"autoretry_for: [OSError], max_retries: 0, {BACKOFF}",
     OSError, 10, "max_retries"),
    ("not listed", f"autoretry_for: [OSError], max_retries: 3, {BACKOFF}",
     KeyError, 10, "not_retryable"),
    ("excluded", f"autoretry_for: [OSError], dont_autoretry_for: [ConnectionError], {BACKOFF}",
     ConnectionResetError, 10, "not_retryable"),
    ("not retryable, deadline already passed",
     f"autoretry_for: [OSError], retry_deadline: 1s, {BACKOFF}", KeyError, 10, "not_retryable"),
    ("unlimited, no deadline", f"autoretry_for: [OSError], max_retries: unlimited, {BACKOFF}",
     OSError, 12, "retry"),
    ("unlimited, deadline not reached",
     f"autoretry_for: [OSError], max_retries: unlimited, retry_deadline: 1m, {BACKOFF}",
     OSError, 2, "retry"),
    ("unlimited, next attempt after the deadline",
     f"autoretry_for: [OSError], max_retries: unlimited, retry_deadline: 1m, {BACKOFF}",
     OSError, 10, "deadline"),
    ("deadline on the first retry",
     f"autoretry_for: [OSError], max_retries: 5, retry_deadline: 5s, {BACKOFF}",
     OSError, 10, "deadline"),
    ("max_retries used and past the deadline: max_retries is checked first",
     f"autoretry_for: [OSError], max_retries: 2, retry_deadline: 1m, {BACKOFF}",
     OSError, 10, "max_retries"),
    ("per-exception rule", f"autoretry_for: [OSError], retry_per_exception: "
     f"{{TimeoutError: {{max_retries: 1}}}}, {BACKOFF}", TimeoutError, 10, "max_retries"),
]


@pytest.mark.parametrize(("defaults", "raised", "attempts", "expected"),
                         [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_the_wrapper_does_what_the_timeline_s_last_step_says(
        defaults: str, raised: type[Exception], attempts: int, expected: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_for(defaults)
    last = simulate(settings, raised, attempts)[-1]
    assert last.outcome == expected
    assert last.start[0] == last.start[1]  # no jitter: one path
    wrapped = Wrapped(settings, raised, monkeypatch)
    outcome, countdown = wrapped.outcome(last.attempt - 1, last.start[0])
    assert outcome == last.outcome
    assert (countdown, countdown) == (last.delay or (None, None))


def steps_and_elapsed(steps: list[Step]) -> list[tuple[Step, float]]:
    return [(step, elapsed) for step in steps for elapsed in step.start]


def test_with_jitter_the_wrapper_retries_or_gives_up_as_the_timeline_says_whatever_it_draws(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A ``retry`` step retries and a ``deadline`` step gives up for every draw, at either
    end of the step's start range; only a ``maybe`` step depends on the draw."""
    settings = settings_for("autoretry_for: [OSError], max_retries: unlimited, "
                            "retry_backoff: 10s, retry_jitter: equal, retry_deadline: 2m")
    steps = simulate(settings, OSError, 20)
    assert [step.outcome for step in steps] == ["retry", "retry", "retry", "maybe", "deadline"]
    wrapped = Wrapped(settings, OSError, monkeypatch)
    for step, elapsed in steps_and_elapsed(steps):
        if step.outcome == "maybe":
            continue
        for _ in range(50):
            outcome, countdown = wrapped.outcome(step.attempt - 1, elapsed)
            assert outcome == step.outcome
            if step.delay is not None:
                assert countdown is not None
                assert step.delay[0] <= countdown <= step.delay[1]
