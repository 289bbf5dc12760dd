"""What every command shares: loading the file, finding the app, printing."""

from __future__ import annotations

import os
import sys
from typing import Any, Literal, NoReturn, overload

import click
from celery import Celery
from rich.console import Console

from ..appinfo import load_app
from ..connections import BROKER_TIMEOUT_ENV, DEFAULT_BROKER_TIMEOUT
from ..errors import PolicyFileError
from ..spec.loader import Policies, load_policies

#: Width of tables when the output is not a terminal (files, pipes, CI logs).
PIPE_WIDTH = 160


def console() -> Console:
    """A console on the current stdout: the terminal's width, or ``PIPE_WIDTH`` in a pipe."""
    width = None if sys.stdout.isatty() or "COLUMNS" in os.environ else PIPE_WIDTH
    return Console(highlight=False, width=width, file=sys.stdout)


#: Where ``--broker-timeout`` keeps its value for the command (click's ``ctx.meta``).
_TIMEOUT_KEY = "celery_policies.broker_timeout"


def _remember_timeout(ctx: click.Context, param: click.Parameter, value: float) -> float:
    ctx.meta[_TIMEOUT_KEY] = value
    return value


#: ``--broker-timeout``, on every command that talks to the broker.
broker_timeout_option = click.option(
    "--broker-timeout", type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_BROKER_TIMEOUT, envvar=BROKER_TIMEOUT_ENV, show_envvar=True,
    show_default=True, metavar="SECONDS", expose_value=False, callback=_remember_timeout,
    is_eager=True,
    help="Give up when the broker does not answer within SECONDS in any one operation "
         "(connecting, each read or write).")


def broker_timeout(ctx: click.Context) -> float:
    """The ``--broker-timeout`` of this command, in seconds."""
    value: float = ctx.meta.get(_TIMEOUT_KEY, DEFAULT_BROKER_TIMEOUT)
    return value


def fail_on_problems(error: PolicyFileError) -> NoReturn:
    """Print every problem of an invalid file and exit 1."""
    for problem in error.problems:
        click.echo(str(problem), err=True)
    click.echo(error.summary, err=True)
    sys.exit(1)


def read_policies(path: str, *, import_exceptions: bool = False) -> Policies:
    try:
        return load_policies(path, import_exceptions=import_exceptions)
    except PolicyFileError as exc:
        fail_on_problems(exc)


@overload
def find_app(ctx: click.Context, name: str | None, *, required: Literal[True]) -> Celery: ...


@overload
def find_app(ctx: click.Context, name: str | None, *, required: bool) -> Celery | None: ...


def find_app(ctx: click.Context, name: str | None, *, required: bool) -> Celery | None:
    """The app named by ``--app``, else the one ``celery -A proj policies ...`` loaded."""
    if name:
        try:
            return load_app(name)
        except Exception as exc:
            raise click.BadParameter(f"cannot load app {name!r}: {type(exc).__name__}: {exc}",
                                     ctx=ctx, param_hint="'--app'") from exc
    celery_ctx: Any = ctx.find_root().obj
    app = getattr(celery_ctx, "app", None)
    if isinstance(app, Celery):
        app.loader.import_default_modules()
        return app
    if required:
        raise click.UsageError("this command needs --app MODULE (the module `celery -A` takes)",
                               ctx=ctx)
    return None
