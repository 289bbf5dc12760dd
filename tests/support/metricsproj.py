"""The test app of the metrics tests (``celery -A tests.support.metricsproj``): the app of
``tests.support.proj``, with tasks of its own for each way a task ends. Each task's policy
is in tests/integration/metrics.yaml."""

from __future__ import annotations

from typing import Any

from celery.exceptions import Reject

from tests.support.proj import _flaky, app, collect, record, sleepy, stubborn, suicide

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
