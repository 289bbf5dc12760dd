"""What each setting is, in one table: the worker, ``explain`` and its rendering, and the JSON
Schema read it instead of keeping lists of keys of their own.

A new setting is a field of ``PolicySettings`` (``model.py``), a row here, and the code that
acts on it. ``tests/unit/test_settings.py`` checks the table against the model and Celery.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from .values import UNLIMITED

#: What a setting's value is, which says how it is converted and shown (see ``SettingInfo``).
Kind = Literal["bool", "count", "duration", "rate", "exceptions", "backoff", "jitter",
               "overrides", "routes", "mapping"]
#: Where Celery keeps a setting, if it knows it (see ``SettingInfo.celery``).
CeleryHome = Literal["task", "autoretry"]


@dataclass(frozen=True)
class SettingInfo:
    """One row of the table: one key of ``PolicySettings``."""

    #: The key, spelled as in the file and, where Celery has it, as Celery spells it.
    key: str
    #: ``bool``; ``count`` (a whole number >= 0); ``duration`` (float seconds); ``rate``
    #: (Celery's ``10/s``); ``exceptions`` (a list of exception classes); ``backoff`` (false,
    #: or the base delay in seconds); ``jitter`` (full, equal or none); ``overrides`` (exception
    #: class to the retry settings it gets); ``routes`` (failure routes, in order); ``mapping``
    #: (a section of named keys, shown as ``key=value``).
    kind: Kind
    #: ``"task"``: an attribute of Celery's ``Task`` class (Celery fills some of them from app
    #: config, ``Task.from_config``); ``"autoretry"``: an option only ``celery/app/autoretry.py``
    #: reads, with a default of its own; ``None``: the plugin's own key, unknown to Celery. The
    #: worker sets the first two on the task as plain attributes.
    celery: CeleryHome | None
    #: Set in the file, it hands the task's retries to the plugin's retry wrapper.
    retry: bool
    #: How the file says "no limit": ``"null"``, or ``"unlimited"`` (which Celery spells
    #: ``None``); ``None`` when the key has no limit to lift.
    no_limit: Literal["null", "unlimited"] | None
    #: The value when neither the file nor the task's code sets it, for keys Celery's ``Task``
    #: class does not carry: the plugin's own default, or the one ``celery/app/autoretry.py``
    #: passes to ``getattr``. Keys of ``Task`` take theirs from Celery; left out, it is None.
    default: Any = None

    @property
    def unit(self) -> Literal["seconds"] | None:
        """``"seconds"`` when a number is a time in seconds, shown as ``30s``, ``5m``."""
        return "seconds" if self.kind in ("duration", "backoff") else None


# One row per setting, in the model's order; the columns are SettingInfo's fields.
_ROWS = (
    #           key                           kind          celery       retry  no_limit  default
    SettingInfo("acks_late",                  "bool",       "task",      False, None),
    SettingInfo("acks_on_failure_or_timeout", "bool",       "task",      False, None),
    SettingInfo("reject_on_worker_lost",      "bool",       "task",      False, None),
    # None here; effective_settings() in appinfo.py makes it 3 under reject_on_worker_lost.
    SettingInfo("max_redeliveries",           "count",      None,        False, UNLIMITED),
    SettingInfo("time_limit",                 "duration",   "task",      False, "null"),
    SettingInfo("soft_time_limit",            "duration",   "task",      False, "null"),
    SettingInfo("rate_limit",                 "rate",       "task",      False, "null"),
    SettingInfo("autoretry_for",              "exceptions", "autoretry", True,  None,     ()),
    SettingInfo("dont_autoretry_for",         "exceptions", "autoretry", True,  None,     ()),
    SettingInfo("max_retries",                "count",      "task",      True,  UNLIMITED),
    SettingInfo("default_retry_delay",        "duration",   "task",      True,  None),
    SettingInfo("retry_backoff",              "backoff",    "autoretry", True,  None,     False),
    SettingInfo("retry_backoff_max",          "duration",   "autoretry", True,  None,     600),
    SettingInfo("retry_jitter",               "jitter",     "autoretry", True,  None,     True),
    SettingInfo("retry_deadline",             "duration",   None,        True,  "null"),
    SettingInfo("retry_per_exception",        "overrides",  None,        True,  None),
    SettingInfo("on_failure",                 "routes",     None,        False, None),
    SettingInfo("publish_retry_policy",       "mapping",    None,        False, None),
)

#: Every setting by key, in the order of ``PolicySettings.model_fields``.
SETTINGS: dict[str, SettingInfo] = {row.key: row for row in _ROWS}
SETTING_KEYS: tuple[str, ...] = tuple(SETTINGS)


def _keys(celery: CeleryHome) -> tuple[str, ...]:
    return tuple(key for key, info in SETTINGS.items() if info.celery == celery)


#: Keys the worker sets as plain task attributes: Celery's ``Task`` attributes, then the
#: autoretry options. The consumer reads acks_late, the time limits and rate_limit when it
#: starts; retry() reads max_retries and default_retry_delay; the autoretry options mirror
#: what the retry wrapper does, so that the task reads as it behaves.
ATTRIBUTE_KEYS: tuple[str, ...] = _keys("task") + _keys("autoretry")
#: Keys that make the plugin's retry wrapper take over a task's retries.
RETRY_KEYS: frozenset[str] = frozenset(key for key, info in SETTINGS.items() if info.retry)
#: Plugin keys Celery knows nothing of, with their value when the file does not set them.
PLUGIN_DEFAULTS: dict[str, Any] = {key: info.default for key, info in SETTINGS.items()
                                   if info.celery is None}
#: The autoretry options with the defaults ``celery/app/autoretry.py`` gives them; they are
#: not on ``Task``.
AUTORETRY_DEFAULTS: dict[str, Any] = {key: SETTINGS[key].default for key in _keys("autoretry")}
