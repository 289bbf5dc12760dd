"""A small shop's Celery app: billing, reports and emails. Run it with ``celery -A examples.shop``.

None of its tasks carries a retry, time-limit or acknowledgement option: those come from
``policies.example.yaml``.
"""

from .app import app

__all__ = ["app"]
