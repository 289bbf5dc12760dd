"""The plugin's loggers, and the lines that other parts of it recognise.

The Sentry reporter keeps sentry_sdk's logging integration off some of these loggers (a
line that holds arguments, or repeats a failure it reports as an event of its own) and reads
these formats back to screen what does reach Sentry.
"""

from __future__ import annotations

import logging

#: The package's logger: startup, refusals, routes not taken.
log = logging.getLogger("celery_policies")

#: The CRITICAL line of a route that could not be taken: what, why, and the message as JSON
#: (arguments included), on ``REDO_LOGGER`` alone.
REDO_FORMAT = "could not %s (%r); to redo it by hand: %s"
#: What every formatted ``REDO_FORMAT`` line holds, however its arguments read.
REDO_MARK = "; to redo it by hand: "
#: The logger of the ``REDO_FORMAT`` lines. They hold a task's arguments, so the Sentry
#: reporter has sentry_sdk's logging integration ignore it (no event, breadcrumb or Sentry
#: Log); the worker's own log handlers write it like any other.
REDO_LOGGER = "celery_policies.redo"
#: The CRITICAL line, on the package's logger, that says a route was not taken without the
#: message: what, why, and where the message is. This one may reach Sentry.
UNTAKEN_FORMAT = "failure route not taken: %s (%r); its message is logged in full by " \
                 "the %s logger, to redo it by hand"
#: The logger of the line each give-up writes. It repeats a failure the Sentry reporter sends
#: as an event of its own, so the reporter keeps Sentry's logging integration off it.
GIVE_UP_LOGGER = "celery_policies.gave_up"
#: The ERROR line of a task failed for good after its last redelivery.
EXHAUSTED_FORMAT = "%s; failing the task"
