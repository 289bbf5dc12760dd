"""Reporting tasks: long-running, safe to run twice."""

from __future__ import annotations

import time

from celery.exceptions import SoftTimeLimitExceeded

from .app import app


@app.task(name="shop.reports.build_monthly_report")
def build_monthly_report(month: str, seconds: float = 0.0) -> str:
    """Aggregate a month of orders; ``seconds`` stands for the time the real work takes."""
    time.sleep(seconds)
    return f"report {month} ready"


@app.task(name="shop.reports.render_archive")
def render_archive(month: str, seconds: float = 0.0) -> str:
    """Render a month's orders to a PDF archive; ``seconds`` stands for the time it takes.

    It stands for work inside a native library that cannot be interrupted: the soft time
    limit's ``SoftTimeLimitExceeded`` arrives, is caught, and the work goes on, so only the
    hard time limit, which kills the worker process running it, stops the task.
    """
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        try:
            time.sleep(left)
        except SoftTimeLimitExceeded:
            continue  # the native call does not notice the signal
    return f"archive {month} rendered"
