"""What the plugin adds to ``celery worker``: its options, and a start with no line of code.

Celery's command line imports every ``celery.commands`` entry point as it starts
(``with_plugins`` in celery/bin/celery.py, the same in 5.3 to 5.7); this package's is
``celery_policies.celery_command:policies``, whose import calls ``enable()``. That adds
``--policies``, ``--policies-strict`` and the ``--policies-metrics-*`` options to the worker
command and connects one
``worker_init`` receiver, so that ``celery -A proj worker --policies policies.yaml`` applies
the file to an app that never imports the plugin. For such an app it does nothing unless a
file is named by ``--policies``, ``$CELERY_POLICIES_FILE`` or the ``policies_file`` setting:
a worker that asks for nothing runs as before. ``python -m celery`` and
``app.worker_main()`` go through the same command line; a worker built in code
(``app.Worker()``, ``start_worker``) does not, and needs ``install(app)``.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from ..location import CONF_KEY, ENV_VAR

#: The worker's options, on its command line and in ``WorkController.options``.
WORKER_OPTIONS = (
    click.Option(["--policies"], metavar="FILE", default=None,
                 help="celery-policies: the policy file (default: $CELERY_POLICIES_FILE, the "
                      "policies_file setting, or ./policies.yaml)."),
    click.Option(["--policies-strict", "--strict", "policies_strict"], is_flag=True,
                 default=False,
                 help="celery-policies: refuse to start on any policy warning, such as time "
                      "limits the pool does not enforce."),
    click.Option(["--policies-metrics-port", "policies_metrics_port"], metavar="PORT",
                 type=click.IntRange(0, 65535), default=None,
                 help="celery-policies: serve Prometheus metrics on this port, 0 for any free "
                      "one (default: metrics.port in the file, or "
                      "$CELERY_POLICIES_METRICS_PORT; none: no metrics)."),
    click.Option(["--policies-metrics-address", "policies_metrics_address"],
                 metavar="ADDRESS", default=None,
                 help="celery-policies: the address metrics listen on (default: "
                      "metrics.address in the file, $CELERY_POLICIES_METRICS_ADDRESS, or "
                      "127.0.0.1)."),
)


def worker_command() -> click.Command | None:
    """Celery's ``worker`` click command, when Celery's command line is running."""
    module = sys.modules.get("celery.bin.worker")
    command: click.Command | None = getattr(module, "worker", None)
    return command


def add_options(options: Any) -> None:
    """Add the plugin's worker options to ``options`` (a list of click parameters, or the
    app's ``user_options['worker']`` set) unless the worker command already has them."""
    command = worker_command()
    have = {param.name for param in (command.params if command is not None else ())}
    have |= {param.name for param in options}
    for option in WORKER_OPTIONS:
        if option.name not in have:
            options.add(option) if isinstance(options, set) else options.append(option)


def enable() -> None:
    """Let ``celery worker`` apply a policy file to an app that does not ``install`` the
    plugin (called when Celery's command line loads the entry point); idempotent."""
    command = worker_command()
    if command is None:
        return  # not Celery's command line (the celery-policies command, a test)
    add_options(command.params)
    from .install import connect_receivers  # noqa: PLC0415 - runtime imports this module

    connect_receivers()


def named_file(app: Any, options: dict[str, Any]) -> str | None:
    """The file a worker was explicitly given: ``--policies``, then ``$CELERY_POLICIES_FILE``,
    then the ``policies_file`` setting (not ``./policies.yaml``: that is for apps that
    ``install`` the plugin)."""
    for candidate in (options.get("policies"), os.environ.get(ENV_VAR),
                      app.conf.get(CONF_KEY)):
        if candidate:
            return os.fspath(candidate)
    return None

