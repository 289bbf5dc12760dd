"""install() and the runtime's bookkeeping, without a worker (workers: tests/integration)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from celery import Celery

from celery_policies import install, load_policies
from celery_policies.location import ENV_VAR
from celery_policies.worker.retrying import ORIGINAL_RUN
from celery_policies.worker.runtime import Runtime

#: Nothing listens on port 1 of the loopback interface: every connection is refused at once.
CLOSED_BROKER = "amqp://guest:guest@127.0.0.1:1//"


def make_app() -> Celery:
    app = Celery("unit", broker=CLOSED_BROKER)

    @app.task(name="unit.fetch", autoretry_for=(TimeoutError,), max_retries=7, shared=False)
    def fetch() -> str:
        return "fetched"

    @app.task(name="unit.plain", shared=False)
    def plain() -> str:
        return "plain"

    return app


def test_installing_twice_is_the_same_as_once() -> None:
    app = make_app()
    first = install(app)
    send_task = app.send_task
    assert install(app) is first
    assert app.send_task is send_task
    assert [o.name for o in app.user_options["worker"]].count("policies") == 1


def test_applying_twice_patches_once_and_keeps_the_task_code(
        policy_file: Callable[[str], Path]) -> None:
    app = make_app()
    path = policy_file("""
        version: 1
        policies:
          - match: unit.*
            autoretry_for: [ConnectionError]
            max_retries: 2
            acks_late: true
            time_limit: 30s
    """)
    runtime = install(app, path)
    fetch = app.tasks["unit.fetch"]
    code_run = fetch.__dict__["_orig_run"]  # under Celery's own autoretry wrapper
    runtime.apply(load_policies(path, import_exceptions=True))
    wrapped = fetch.run
    runtime.apply(load_policies(path, import_exceptions=True))

    assert fetch.__dict__[ORIGINAL_RUN] is code_run
    assert fetch.run is not wrapped  # re-wrapped around the same code, not around itself
    assert fetch.acks_late is True
    assert fetch.time_limit == 30.0
    assert fetch.max_retries == 2
    assert fetch.autoretry_for == (ConnectionError,)
    assert fetch.run() == "fetched"
    assert runtime.tasks["unit.fetch"].retry is not None


def test_the_file_is_the_argument_then_option_then_environment_then_setting_then_default(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(ENV_VAR, raising=False)
    app = make_app()
    runtime = Runtime(app, None)
    assert runtime.locate() is None
    (tmp_path / "policies.yaml").write_text("version: 1\n")
    assert runtime.locate() == "policies.yaml"
    app.conf.policies_file = "from-settings.yaml"
    assert runtime.locate() == "from-settings.yaml"
    monkeypatch.setenv(ENV_VAR, "from-env.yaml")
    assert runtime.locate() == "from-env.yaml"
    assert runtime.locate("from-option.yaml") == "from-option.yaml"
    assert Runtime(app, "from-install.yaml").locate("from-option.yaml") == "from-install.yaml"


def test_a_publishing_process_applies_publish_retry_policy(
        policy_file: Callable[[str], Path]) -> None:
    app = make_app()
    path = policy_file("""
        version: 1
        policies:
          - match: unit.fetch
            publish_retry_policy:
              max_retries: 3
              interval_start: 0.3s
              interval_step: 0.3s
              interval_max: 0.3s
    """)
    runtime = install(app, path)
    assert runtime.publish_retry_policy("unit.fetch") == {
        "max_retries": 3, "interval_start": 0.3, "interval_step": 0.3, "interval_max": 0.3}
    assert runtime.publish_retry_policy("unit.plain") is None

    def publish(**options: object) -> float:
        started = time.monotonic()
        with pytest.raises(Exception, match="Connection refused"):
            app.tasks["unit.fetch"].apply_async(**options)
        return time.monotonic() - started

    assert publish() >= 0.85  # three waits of 0.3s before giving up
    assert publish(retry_policy={"max_retries": 0}) < 0.85  # the caller's choice wins
    assert runtime.tasks == {}  # nothing of the worker side was applied


def test_five_hundred_apps_installed_add_no_signal_receivers() -> None:
    """Test suites create an app per test and install the plugin on each: the worker's
    receivers are connected once for the process, and keep no app alive."""
    from celery import signals  # noqa: PLC0415

    install(make_app())
    watched = (signals.worker_init, signals.celeryd_after_setup, signals.worker_process_init)
    before = [len(signal.receivers) for signal in watched]
    for _ in range(500):
        install(make_app())
    assert [len(signal.receivers) for signal in watched] == before
