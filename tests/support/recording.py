"""Task bodies that record each attempt in Redis, for apps that must not import the plugin
(``tests.support.plainproj``, the Django project): nothing here imports celery_policies."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import redis

REDIS_URL = os.environ.get("CELERY_POLICIES_TEST_REDIS", "redis://127.0.0.1:6379")
#: The first of the three Redis databases the tests use: broker, results, counters. Two test
#: runs side by side need their own (.ci/run): kombu keeps one table of unacknowledged
#: messages per database, and a worker restores any it finds past its visibility_timeout.
REDIS_DB = int(os.environ.get("CELERY_POLICIES_TEST_REDIS_DB", "0"))
BROKER_URL = os.environ.get("TEST_BROKER_URL", f"{REDIS_URL}/{REDIS_DB}")
RESULT_BACKEND = os.environ.get("TEST_RESULT_BACKEND", f"{REDIS_URL}/{REDIS_DB + 1}")
COUNTERS_URL = os.environ.get("TEST_COUNTERS_URL", f"{REDIS_URL}/{REDIS_DB + 2}")
counters = redis.Redis.from_url(COUNTERS_URL)


class Flaky(ConnectionError):
    """A transient error a policy file retries."""


def flaky(task: Any, key: str, fail_times: int) -> str:
    """Record the attempt under ``key``; raise ``Flaky`` on the first ``fail_times``."""
    counters.rpush(key, json.dumps([time.time(), os.getpid(), task.request.retries]))
    if task.request.retries < fail_times:
        raise Flaky(f"attempt {task.request.retries + 1} of {task.name}")
    return "ok"
