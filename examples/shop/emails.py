"""Email tasks, sent through an external provider."""

from __future__ import annotations

from typing import Any

from .app import app
from .errors import ProviderRateLimited, SmtpUnavailable


@app.task(bind=True, name="shop.emails.send_receipt")
def send_receipt(self: Any, order_id: int, fail_first: int = 0,
                 rate_limited_first: int = 0) -> str:
    """Email the receipt of an order."""
    if self.request.retries < rate_limited_first:
        raise ProviderRateLimited("provider says: slow down")
    if self.request.retries < fail_first:
        raise SmtpUnavailable("mail relay refused the connection")
    return f"receipt for order {order_id} sent"


@app.task(name="shop.emails.send_newsletter")
def send_newsletter(batch: int) -> str:
    """Send one batch of the newsletter."""
    return f"newsletter batch {batch} sent"
