"""The web console: dead letters, policies and the fleet in a browser (docs/console.md).

Optional: ``pip install 'celery-policies[console]'`` brings Starlette, Jinja2 and uvicorn.
``create_app`` builds the ASGI application that ``celery-policies console`` serves, for a
team to mount in its own site instead.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app"]

#: What to install when the console's dependencies are missing.
INSTALL = "pip install 'celery-policies[console]'"


def create_app(*args: Any, **kwargs: Any) -> Any:
    """The console's ASGI application (``console/app.py``, ``create_app``)."""
    try:
        from .app import create_app as make  # noqa: PLC0415 - the optional extra
    except ImportError as exc:
        raise ImportError(f"the console needs Starlette, Jinja2 and uvicorn ({exc}): "
                          f"{INSTALL}") from exc
    return make(*args, **kwargs)
