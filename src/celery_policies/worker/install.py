"""``install(app)``, and the worker's signal receivers that find each app's ``Runtime``."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from celery import Celery, current_app, signals

from ..compat import real_app
from ..guard import guard
from ..location import ENV_VAR
from .inspect import RUNTIME_ATTR
from .options import add_options, named_file
from .runtime import WORKER_REFUSES, Runtime, refuse


def install(app: Celery, path: str | os.PathLike[str] | None = None) -> Runtime:
    """Apply the policy file to ``app``'s workers; call it once where the app is created.

    The file is ``path``, else the worker's ``--policies FILE``, else
    ``$CELERY_POLICIES_FILE``, else the ``policies_file`` setting, else ``./policies.yaml``.
    A worker loads it at startup and refuses to start when it is invalid. In a process that
    only publishes, only ``publish_retry_policy`` applies. Calling it again changes nothing.
    """
    runtime: Runtime | None = getattr(app, RUNTIME_ATTR, None)
    if runtime is not None:
        return runtime
    runtime = Runtime(app, path)
    setattr(app, RUNTIME_ATTR, runtime)
    add_options(app.user_options["worker"])
    connect_receivers()
    _wrap_send_task(app, runtime)
    return runtime


def runtime_of(app: Celery | None) -> Runtime | None:
    """The runtime ``install`` attached to ``app``, if any."""
    return getattr(app, RUNTIME_ATTR, None)


# -- the worker's signals -----------------------------------------------------------------------
# One receiver per signal for the whole process, however many apps call install (a test suite
# may create hundreds): each finds the runtime of the app the signal is about, and no app is
# kept alive by the signal.
_RECEIVER_UID = "celery_policies.worker.runtime"


def connect_receivers() -> None:
    """Connect the worker's signal receivers; connecting again changes nothing."""
    signals.worker_init.connect(_on_worker_init, weak=False, dispatch_uid=_RECEIVER_UID)
    signals.celeryd_after_setup.connect(_on_after_setup, weak=False,
                                        dispatch_uid=_RECEIVER_UID)
    signals.worker_process_init.connect(_on_process_init, weak=False,
                                        dispatch_uid=_RECEIVER_UID)


def _on_worker_init(sender: Any = None, **_: Any) -> None:
    app = getattr(sender, "app", None)
    runtime = runtime_of(app)
    if runtime is None:
        with guard("set up the policies", WORKER_REFUSES, level=logging.CRITICAL) as step:
            if app is None or named_file(app, getattr(sender, "options", None) or {}) is None:
                return  # an app that neither installs the plugin nor names a file: hands off
            runtime = install(app)  # celery -A proj worker --policies FILE, no line of code
        if step.failed or runtime is None:
            refuse(["celery-policies: could not set up the policies; the worker does not "
                    "start"])
            return
    runtime.on_worker_init(sender)


def _on_after_setup(instance: Any = None, **_: Any) -> None:
    runtime = runtime_of(getattr(instance, "app", None))
    if runtime is not None:
        runtime.on_after_setup(instance)


def _on_process_init(sender: Any = None, **_: Any) -> None:
    """A pool child started without fork (``worker_pool_start_method = spawn``) has none of
    the main process's patches. The main process exported the file it applied; such a child
    runs an unpickled copy of the app (``Celery.__reduce__``), made current by
    ``process_initializer`` (celery/concurrency/prefork.py), not the module's app."""
    path = os.environ.get(ENV_VAR)
    if path:
        install(real_app(current_app)).on_process_init(sender, path)


def _wrap_send_task(app: Celery, runtime: Runtime) -> None:
    """Give every publish the task's ``publish_retry_policy`` unless the caller chose one.

    ``Task.apply_async``, ``retry()`` and ``send_task`` by name all publish through
    ``app.send_task``; a retry policy is not a task attribute Celery reads, so it goes here.
    """
    send_task: Callable[..., Any] = app.send_task

    def send_task_with_policy(name: str, *args: Any, **options: Any) -> Any:
        if options.get("retry_policy") is None:
            with guard(f"choose the publish_retry_policy of {name}",
                       "publishing with Celery's settings"):
                policy = runtime.publish_retry_policy(name)
                if policy is not None:
                    options["retry_policy"] = policy
        return send_task(name, *args, **options)

    app.send_task = send_task_with_policy
