"""Email tasks, sent through an external provider."""

from __future__ import annotations

import os
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


#: Names a file that, while it exists, stands for a mail relay that is down (for the demo).
RELAY_DOWN_VAR = "SHOP_MAIL_RELAY_DOWN"


@app.task(name="shop.emails.send_newsletter")
def send_newsletter(batch: int) -> str:
    """Send one batch of the newsletter."""
    down = os.environ.get(RELAY_DOWN_VAR)
    if down and os.path.exists(down):
        raise SmtpUnavailable("mail relay is down")
    return f"newsletter batch {batch} sent"
