"""Django settings: the Celery ones carry the CELERY_ prefix; the policy file is named
by ``CELERY_POLICIES_FILE`` like any other Celery setting (``$TEST_DJANGO_POLICIES``)."""

from __future__ import annotations

import os

from tests.support.recording import BROKER_URL, RESULT_BACKEND

SECRET_KEY = "tests-only"
INSTALLED_APPS = ["tests.support.djproj.shop"]
DATABASES: dict[str, object] = {}
USE_TZ = True

CELERY_BROKER_URL = BROKER_URL
CELERY_RESULT_BACKEND = RESULT_BACKEND
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_TIMER_PRECISION = 0.05
CELERY_POLICIES_FILE = os.environ.get("TEST_DJANGO_POLICIES")
