"""The test app of the metrics tests (``celery -A tests.support.metricsproj``): the app of
``tests.support.proj``, with tasks of its own for each way a task ends. Each task's policy
is in tests/integration/metrics.yaml.

``TEST_SENTRY_DROP``: the app initialises sentry_sdk itself (``TEST_SENTRY_DSN``) with a
``before_send`` that discards every event whose text holds this value, as an application's
own filter would.
"""

from __future__ import annotations

import json
import os
from typing import Any

from celery.exceptions import Reject

from tests.support.proj import _flaky, app, collect, record, sleepy, stubborn, suicide


def _init_sentry(drop: str) -> None:
    import sentry_sdk  # noqa: PLC0415 - only the Sentry metrics test needs it
    from sentry_sdk.integrations.celery import CeleryIntegration  # noqa: PLC0415

    def before_send(event: Any, hint: Any) -> Any:
        return None if drop in json.dumps(event, default=str) else event

    sentry_sdk.init(dsn=os.environ["TEST_SENTRY_DSN"], before_send=before_send,
                    disabled_integrations=[CeleryIntegration()])


if os.environ.get("TEST_SENTRY_DROP"):
    _init_sentry(os.environ["TEST_SENTRY_DROP"])

for _name in ("flaky", "deadline"):
    app.task(bind=True, name=f"metrics.{_name}", shared=False)(_flaky)

app.task(name="metrics.limits.sleepy", shared=False)(sleepy.run)
app.task(name="metrics.limits.stubborn", shared=False)(stubborn.run)
app.task(name="metrics.lost", shared=False)(suicide.run)
app.task(name="metrics.work", shared=False)(collect.run)


@app.task(bind=True, name="metrics.doomed", shared=False)
def doomed(self: Any, key: str) -> None:
    """Fail for good at once (no policy retries it)."""
    record(key, self.request.retries)
    raise ValueError(f"{key} cannot be done")


@app.task(name="metrics.rejected", shared=False)
def rejected(key: str) -> None:
    """Reject its message without requeueing it: the end of the task."""
    record(key)
    raise Reject("not for this worker", requeue=False)


__all__ = ["app"]
