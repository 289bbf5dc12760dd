"""The shop's Celery app. Broker and result backend come from the environment."""

from __future__ import annotations

import os

from celery import Celery

app = Celery(
    "shop",
    broker=os.environ.get("CELERY_BROKER_URL", "memory://"),
    backend=os.environ.get("CELERY_RESULT_BACKEND") or None,
    include=["examples.shop.billing", "examples.shop.reports", "examples.shop.emails"],
)
