"""Billing tasks. ``fail_first`` makes a task fail on its first attempts, for demos and tests."""

from __future__ import annotations

from typing import Any

from .app import app
from .errors import CardDeclined, GatewayTimeout


@app.task(bind=True, name="shop.billing.charge_card")
def charge_card(self: Any, order_id: int, amount_cents: int, fail_first: int = 0,
                decline: bool = False) -> dict[str, Any]:
    """Charge an order's card through the payment gateway."""
    if decline:
        raise CardDeclined(f"card for order {order_id} declined")
    if self.request.retries < fail_first:
        raise GatewayTimeout(f"gateway timed out charging order {order_id}")
    return {"order_id": order_id, "charged": amount_cents}


@app.task(name="shop.billing.refund")
def refund(order_id: int, amount_cents: int) -> dict[str, Any]:
    """Refund part or all of an order."""
    return {"order_id": order_id, "refunded": amount_cents}


@app.task(name="shop.billing.notify_payment_team")
def notify_payment_team(task_id: str, task_name: str, args: list[Any], kwargs: dict[str, Any],
                        exception_type: str, exception_message: str) -> str:
    """The failure route of payments: tell a human that a charge failed for good."""
    return f"paged payments on-call: {task_name}[{task_id}] {exception_type}: {exception_message}"
