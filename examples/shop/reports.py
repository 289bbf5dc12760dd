"""Reporting tasks: long-running, safe to run twice."""

from __future__ import annotations

import time

from .app import app


@app.task(name="shop.reports.build_monthly_report")
def build_monthly_report(month: str, seconds: float = 0.0) -> str:
    """Aggregate a month of orders; ``seconds`` stands for the time the real work takes."""
    time.sleep(seconds)
    return f"report {month} ready"
