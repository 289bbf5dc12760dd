"""What a Celery app says on its own: its registered tasks and the settings in their code.

``explain`` and ``check --app`` read this; no worker is started and nothing is patched.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any

from celery import Celery
from celery.app.defaults import DEFAULTS
from celery.app.task import Task
from celery.app.utils import find_app

from .spec.exception_refs import exception_name
from .spec.matching import ResolvedPolicy, Setting, Source
from .spec.settings import AUTORETRY_DEFAULTS, PLUGIN_DEFAULTS, SETTING_KEYS, SETTINGS
from .spec.values import UNLIMITED

# PLUGIN_DEFAULTS and SETTING_KEYS are defined in spec/settings.py; the worker reads them here.
__all__ = ["DEFAULT_MAX_REDELIVERIES", "PLUGIN_DEFAULTS", "SETTING_KEYS", "code_setting",
           "effective_settings", "load_app", "lookup", "registered_tasks"]

#: The max_redeliveries that reject_on_worker_lost gets unless the file sets one.
DEFAULT_MAX_REDELIVERIES = 3

# Attributes Celery fills from app config at Task.bind() (Task.from_config, celery/app/task.py).
_CONFIG_KEYS = dict(Task.from_config)


def load_app(name: str) -> Celery:
    """Import the app the way ``celery -A name`` does, and import its task modules."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    app = find_app(name)
    if not isinstance(app, Celery):
        raise TypeError(f"{name!r} is not a Celery app (found {type(app).__name__})")
    app.loader.import_default_modules()
    return app


def registered_tasks(app: Celery, *, builtin: bool = False) -> dict[str, Task]:
    """The app's tasks by name, without Celery's own ``celery.*`` tasks unless ``builtin``."""
    app.finalize(auto=True)
    return {name: task for name, task in sorted(app.tasks.items())
            if builtin or not name.startswith("celery.")}


def _as_file_value(key: str, value: Any) -> Any:
    """A task attribute written the way the file writes it."""
    info = SETTINGS[key]
    if info.kind == "exceptions":
        return tuple(exception_name(v) if isinstance(v, type) else v for v in value or ())
    if info.no_limit == UNLIMITED and value is None:
        return UNLIMITED  # Celery: max_retries=None retries forever (celery#1875)
    if info.kind == "backoff" and value is True:
        return 1.0  # celery/app/autoretry.py: retry_backoff=True is a 1 s base
    if info.kind == "jitter" and isinstance(value, bool):
        return "full" if value else "none"
    if info.kind == "duration" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def code_setting(app: Celery, task: Task, key: str) -> Setting:
    """The value ``key`` has for ``task`` without any policy file, and where it comes from."""
    if key in PLUGIN_DEFAULTS:
        return Setting(PLUGIN_DEFAULTS[key], Source("plugin"))
    value = getattr(task, key, AUTORETRY_DEFAULTS.get(key))
    if key in _CONFIG_KEYS:
        config_key = _CONFIG_KEYS[key]
        configured = app.conf.get(config_key)
        if value == configured:
            default = DEFAULTS.get(config_key)
            source = Source("celery") if configured == default else Source("config",
                                                                             detail=config_key)
            return Setting(_as_file_value(key, value), source)
        return Setting(_as_file_value(key, value), Source("code"))
    default = getattr(Task, key, AUTORETRY_DEFAULTS.get(key))
    source = Source("celery") if value == default else Source("code")
    return Setting(_as_file_value(key, value), source)


def effective_settings(app: Celery | None, task: Task | None,
                       resolved: ResolvedPolicy) -> dict[str, tuple[Setting, Setting | None]]:
    """Every setting of a task: (effective setting, the task-code or app-config setting the
    file overrides, if any).

    Without an app, keys the file leaves unset show Celery's defaults.
    """
    out: dict[str, tuple[Setting, Setting | None]] = {}
    for key in SETTING_KEYS:
        if app is not None and task is not None:
            code = code_setting(app, task, key)
        else:
            code = _default_setting(key)
        chosen = resolved.settings.get(key)
        if chosen is None:
            out[key] = (code, None)
        else:
            replaced = code.source.kind in ("code", "config") and code.value != chosen.value
            overridden = code if replaced else None
            out[key] = (chosen, overridden)
    redeliveries, _ = out["max_redeliveries"]
    if redeliveries.value is None and out["reject_on_worker_lost"][0].value:
        out["max_redeliveries"] = (Setting(DEFAULT_MAX_REDELIVERIES, Source("plugin")), None)
    return out


def _default_setting(key: str) -> Setting:
    if key in PLUGIN_DEFAULTS:
        return Setting(PLUGIN_DEFAULTS[key], Source("plugin"))
    if key in _CONFIG_KEYS:
        return Setting(_as_file_value(key, DEFAULTS.get(_CONFIG_KEYS[key])), Source("celery"))
    return Setting(_as_file_value(key, getattr(Task, key, AUTORETRY_DEFAULTS.get(key))),
                   Source("celery"))


def lookup(settings: Mapping[str, tuple[Setting, Setting | None]]) -> Any:
    """A ``get(key)`` over effective settings, for ``RetrySettings.from_values``."""
    return lambda key: settings[key][0].value if key in settings else None
