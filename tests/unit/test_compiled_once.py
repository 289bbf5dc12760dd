"""A worker derives each task's policy once, at startup: never again per failure.

A real worker (Celery's in-process test worker, solo pool, in-memory broker) applies a file,
then runs 1,000 tasks that retry and fail for good, take their failure routes (a dead letter
chosen by exception class, a callback task) and answer ``inspect policies``. Meanwhile every
way to derive a policy is counted: matching patterns, resolving a task, computing effective
settings, compiling, importing an exception class. All stay at zero.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker

import celery_policies
from celery_policies import appinfo, policy
from celery_policies.spec import exception_refs, matching

TASKS = 1000
POLICIES = """
version: 1
dead_letter:
  queue: compiled.dlq
policies:
  - name: flaky
    match: compiled.*
    autoretry_for: [ConnectionError]
    max_retries: 1
    retry_backoff: 1ms
    retry_jitter: none
    on_failure:
      - dead_letter: true
        when: [ConnectionError]
      - dead_letter: compiled.other
        when: [KeyError]
      - task: compiled.failed
"""


class Flaky(ConnectionError):
    pass


def counting(counts: Counter[str], name: str, function: Callable[..., Any]) -> Any:
    @functools.wraps(function)
    def counted(*args: Any, **kwargs: Any) -> Any:
        counts[name] += 1
        return function(*args, **kwargs)
    return counted


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Celery]:
    app = Celery("compiled", broker="memory://", backend="cache+memory://",
                 set_as_current=False)
    app.conf.task_default_queue = "compiled"

    @app.task(name="compiled.fails", shared=False)
    def fails(n: int) -> None:
        raise Flaky(f"attempt failed: {n}")

    @app.task(name="compiled.failed", shared=False)
    def failed(**_: Any) -> None:
        return None

    path = tmp_path / "policies.yaml"
    path.write_text(POLICIES)
    celery_policies.install(app, path)
    yield app
    app.close()


def test_no_policy_is_derived_again_after_startup(app: Celery,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    counts: Counter[str] = Counter()
    with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=30,
                      queues=["compiled"]):
        runtime = app._celery_policies_runtime  # type: ignore[attr-defined]
        assert runtime.tasks["compiled.fails"].retry is not None  # applied at startup
        for module, name in [(matching.Matcher, "__init__"), (matching.Matcher, "resolve"),
                             (matching.Matcher, "resolve_all"),
                             (matching.Matcher, "matching"),
                             (appinfo, "effective_settings"), (policy, "compile_policy"),
                             (policy, "compile_policies"),
                             (exception_refs, "import_exception"),
                             (exception_refs, "resolve_refs")]:
            monkeypatch.setattr(module, name, counting(counts, name, getattr(module, name)))
        results = [app.tasks["compiled.fails"].delay(n) for n in range(TASKS)]
        for result in results:
            with pytest.raises(Flaky):
                result.get(timeout=60, propagate=True)
        report = runtime.report()
        assert runtime.publish_retry_policy("compiled.fails") is None
    assert report["tasks"]["compiled.fails"]["matched"] == ["flaky"]
    # The failures took their routes, decided from the compiled table ...
    with app.connection_for_read() as connection:
        queue = connection.default_channel.queue_declare("compiled.dlq", passive=True)
    assert queue.message_count == TASKS
    # ... and nothing was derived again.
    assert counts == Counter()
