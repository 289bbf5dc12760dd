"""``celery -A proj policies``: the celery-policies command inside Celery's command line.

Celery imports every ``celery.commands`` entry point as it starts; importing this one also
gives ``celery worker`` its ``--policies`` option (``worker/options.py``). It is the only
module that joins the commands and the worker: ``cli/`` never imports ``worker/``.
"""

from __future__ import annotations

from .cli import policies
from .worker.options import enable

enable()

__all__ = ["policies"]
