"""The Celery app, laid out as in Celery's "First steps with Django"."""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.support.djproj.settings")

app = Celery("djproj")
app.config_from_object("django.conf:settings", namespace="CELERY")
# Celery's Django fixup calls django.setup() before the worker imports the tasks modules.
app.autodiscover_tasks()
