"""Where the policy file is: the one rule the worker and every command follow."""

from __future__ import annotations

import os
from typing import Any

#: The environment variable naming the policy file.
ENV_VAR = "CELERY_POLICIES_FILE"
#: The app setting naming the policy file (``CELERY_POLICIES_FILE`` in Django settings).
CONF_KEY = "policies_file"
#: The file used when nothing names one, if it exists in the working directory.
DEFAULT_FILE = "policies.yaml"


def locate_file(app: Any, *given: str | os.PathLike[str] | None) -> str | None:
    """The first of ``given`` that is set, else ``$CELERY_POLICIES_FILE``, else the app's
    ``policies_file`` setting, else ``./policies.yaml`` if it exists."""
    setting = app.conf.get(CONF_KEY) if app is not None else None
    for candidate in (*given, os.environ.get(ENV_VAR), setting):
        if candidate:
            return os.fspath(candidate)
    return DEFAULT_FILE if os.path.isfile(DEFAULT_FILE) else None
