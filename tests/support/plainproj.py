"""A Celery app that never imports celery-policies: the policies reach its worker only
through ``celery -A tests.support.plainproj worker --policies FILE`` (or
``$CELERY_POLICIES_FILE``), the plugin's ``celery.commands`` entry point.

Environment: ``TEST_BROKER_URL``, ``TEST_RESULT_BACKEND``, ``TEST_COUNTERS_URL``.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from tests.support.recording import BROKER_URL, RESULT_BACKEND, flaky

app = Celery("plainproj", broker=BROKER_URL, backend=RESULT_BACKEND)
app.conf.update(broker_connection_retry_on_startup=True, result_expires=600,
                worker_timer_precision=0.05)


@app.task(bind=True, name="plain.flaky", shared=False)
def plain_flaky(self: Any, key: str, fail_times: int = 0) -> str:
    """No retry options in code: any retry comes from the policy file."""
    return flaky(self, key, fail_times)
