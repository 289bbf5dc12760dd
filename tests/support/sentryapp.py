"""The test app (tests/support/proj.py) run by an application that set Sentry up itself with
everything on that could carry a task argument: CeleryIntegration, ``send_default_pii``,
tracing of every task (``traces_sample_rate=1.0``) and Sentry Logs (``enable_logs``), plus a
hook of its own for each of ``before_send``, ``before_send_transaction``,
``before_breadcrumb`` and ``before_send_log`` that marks what it saw, so a test can show the
plugin chains them rather than replacing them.

Environment: as proj.py, plus ``TEST_SENTRY_APP_INIT`` (``1``: the application initialises
sentry_sdk as above; unset, it leaves Sentry to the policy file) and
``TEST_SENTRY_DATA_COLLECTION`` (JSON: sentry_sdk's ``data_collection`` option, in place of
``send_default_pii``, where the installed sentry-sdk has it).

Also here: ``proj.sentry.rejecting``, a task that rejects its message for good.
"""

from __future__ import annotations

import inspect
import json
import os
from typing import Any

import sentry_sdk
from celery.exceptions import Reject
from sentry_sdk.integrations.celery import CeleryIntegration

#: What the application's own hooks add to each item they see.
APP_MARK = "app_hook"


def _mark(kind: str) -> Any:
    def hook(item: dict[str, Any], hint: dict[str, Any]) -> dict[str, Any]:
        if kind == "log":
            item.setdefault("attributes", {})[APP_MARK] = kind
        elif kind == "breadcrumb":
            item.setdefault("data", {})[APP_MARK] = kind
        else:
            item.setdefault("tags", {})[APP_MARK] = kind
        return item
    return hook


def init() -> None:
    options: dict[str, Any] = {
        "dsn": os.environ["TEST_SENTRY_DSN"], "integrations": [CeleryIntegration()],
        "send_default_pii": True, "traces_sample_rate": 1.0,
        "before_send": _mark("event"), "before_send_transaction": _mark("transaction"),
        "before_breadcrumb": _mark("breadcrumb")}
    if "enable_logs" in inspect.signature(sentry_sdk.consts.ClientConstructor).parameters:
        options.update(enable_logs=True, before_send_log=_mark("log"))
    else:  # older sentry-sdk: Sentry Logs were an experiment
        options["_experiments"] = {"enable_logs": True, "before_send_log": _mark("log")}
    data_collection = os.environ.get("TEST_SENTRY_DATA_COLLECTION")
    if data_collection:
        options.pop("send_default_pii")
        options["data_collection"] = json.loads(data_collection)
    sentry_sdk.init(**options)


if os.environ.get("TEST_SENTRY_APP_INIT") == "1":
    init()

from tests.support.proj import app, record  # noqa: E402 - after the app's sentry_sdk.init


@app.task(bind=True, name="proj.sentry.rejecting", shared=False)
def rejecting(self: Any, key: str, secret: str) -> None:
    """Reject the message for good (``Reject(requeue=False)``), holding ``secret`` in a local."""
    record(key, "rejected", self.request.hostname)
    held = f"value={secret}"
    raise Reject(f"rejected a record ({len(held)} characters)", requeue=False)


__all__ = ["app"]
