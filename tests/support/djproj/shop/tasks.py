"""A Django app's tasks, found by ``app.autodiscover_tasks()`` after ``django.setup()``."""

from __future__ import annotations

from typing import Any

from celery import shared_task
from django.apps import apps

from tests.support.recording import flaky


@shared_task(bind=True, name="djshop.flaky")
def dj_flaky(self: Any, key: str, fail_times: int = 0) -> str:
    """Like a task that uses models, it needs ``django.setup()`` to have run (the app
    registry ready); no retry options in code."""
    assert apps.ready, "django.setup() did not run before the task"
    return flaky(self, key, fail_times)
