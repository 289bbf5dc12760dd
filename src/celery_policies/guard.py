"""Plugin code that runs in Celery's own paths never breaks the host.

The request class's failure handlers, the retry wrapper, the redelivery counter, the publish
wrapper and the Sentry hooks run inside Celery's worker and producer code. An error of the
plugin's there must not replace the task's real exception, stop a publish, or crash the
worker's main process: the failing step is logged, once, and the caller does what Celery
would have done without the plugin (sentry-python's ``capture_internal_exceptions`` is the
same idea).

Only ``Exception`` is caught: ``SystemExit``, ``KeyboardInterrupt`` and Celery's own control
flow (``Retry`` is an ``Exception`` too, so callers keep ``task.retry()`` outside a guard)
pass through.
"""

from __future__ import annotations

import logging
from contextlib import suppress
from types import TracebackType

log = logging.getLogger("celery_policies")

#: The one line a guard logs: what the plugin could not do, the error, what happens instead.
GUARD_FORMAT = "celery-policies: could not %s (%r); %s"
#: What happens instead, when the caller does not say.
CARRY_ON = "carrying on without it"
#: What happens instead in a worker request's handlers and the task's run.
TO_CELERY = "leaving the task to Celery"


class guard:
    """Run a block; if it raises, log one line (with the traceback) and swallow the error.

    ``failed`` tells the caller afterwards whether to fall back::

        with guard("read the redelivery count", "leaving the task to Celery") as step:
            count = int(header)
        if step.failed:
            return celery_behaviour()
    """

    def __init__(self, what: str, fallback: str = CARRY_ON, *,
                 level: int = logging.ERROR) -> None:
        self.what = what
        self.fallback = fallback
        self.level = level
        self.failed = False

    def __enter__(self) -> guard:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> bool:
        if exc is None or not isinstance(exc, Exception):
            return False
        self.failed = True
        with suppress(Exception):  # a broken log handler must not break the host either
            log.log(self.level, GUARD_FORMAT, self.what, exc, self.fallback,
                    exc_info=(type(exc), exc, tb))
        return True
