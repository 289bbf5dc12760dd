"""The ``celery-policies`` command, also available as ``celery -A proj policies``."""

from __future__ import annotations

import os
import sys

import click

from .check import check
from .console import console
from .dlq import dlq
from .explain import explain
from .fleet import fleet
from .metrics import metrics
from .schema import schema
from .simulate import simulate


@click.group(name="policies")
@click.version_option(package_name="celery-policies")
def policies() -> None:
    """See, check and simulate what a celery-policies file does to your tasks; inspect and
    replay its dead letters, and serve their metrics."""
    # Like `celery -A`, find the application's modules (and exceptions) from where it runs.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())


policies.add_command(check)
policies.add_command(explain)
policies.add_command(simulate)
policies.add_command(schema)
policies.add_command(dlq)
policies.add_command(fleet)
policies.add_command(metrics)
policies.add_command(console)


def main() -> None:
    """Entry point of the ``celery-policies`` console script."""
    policies(prog_name="celery-policies")
