"""``celery-policies console``: the web console, served by uvicorn."""

from __future__ import annotations

import ipaddress
import logging
import os
import socket

import click

from ..errors import PolicyError
from ..spec.durations import parse_duration
from ._common import broker_timeout, broker_timeout_option, find_app

#: The console's port unless told otherwise.
DEFAULT_PORT = 5580


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _seconds(ctx: click.Context, param: click.Parameter, value: str) -> float:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


@click.command()
@click.option("--app", "app_name", metavar="MODULE",
              help="The Celery app (as for `celery -A`): its broker, tasks and workers.")
@click.option("--broker", metavar="URL",
              help="A broker URL instead of the app's (dead letters only).")
@click.option("--file", "path", metavar="FILE", type=click.Path(exists=True, dir_okay=False),
              help="The policy file (default: found as the worker finds it).")
@click.option("--queue", "queues", metavar="QUEUE", multiple=True,
              help="A dead-letter queue to read besides those the file routes to (repeatable).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="The address to listen on; anything but loopback needs authentication.")
@click.option("--port", type=click.IntRange(0, 65535), default=DEFAULT_PORT, show_default=True,
              help="The port (0: any free port, printed at start).")
@click.option("--read-only", is_flag=True,
              help="No replay or purge: the actions are not shown and every POST is refused.")
@click.option("--hide-arguments", is_flag=True,
              help="Never show a dead letter's arguments.")
@click.option("--trusted-header", metavar="HEADER",
              help="Take the user's identity from this header, set by the proxy in front "
                   "(e.g. X-Forwarded-User); requests without it are refused.")
@click.option("--refresh", default="10s", show_default=True, callback=_seconds,
              metavar="DURATION", help="Read the dead-letter queues again when a page is "
                                       "asked for and the last reading is this old.")
@broker_timeout_option
@click.pass_context
def console(ctx: click.Context, app_name: str | None, broker: str | None, path: str | None,
            queues: tuple[str, ...], host: str, port: int, read_only: bool,
            hide_arguments: bool, trusted_header: str | None, refresh: float) -> None:
    """Serve the web console: dead letters grouped, replayed and purged; each task's
    policy and what would happen on failure; the fleet's fingerprints.

    Authentication: basic-auth users from $CELERY_POLICIES_CONSOLE_CREDENTIALS (one
    user:password per line), a token from $CELERY_POLICIES_CONSOLE_TOKEN (Bearer, or as the
    basic-auth password), or --trusted-header. Every replay and purge is logged with who
    asked, the filter and how many (logger celery_policies.console.audit).
    """
    try:
        import uvicorn  # noqa: PLC0415 - the optional extra

        from ..console.app import create_app  # noqa: PLC0415 - it imports Starlette
        from ..console.security import Auth  # noqa: PLC0415
    except ImportError as exc:
        raise click.ClickException(f"the console needs Starlette, Jinja2 and uvicorn ({exc}): "
                                   "pip install 'celery-policies[console]'") from exc
    try:
        auth = Auth.from_environment(trusted_header)
    except PolicyError as exc:
        raise click.ClickException(str(exc)) from exc
    if not _loopback(host) and not auth.configured:
        raise click.UsageError(
            f"the console listens on {host} only with authentication: set "
            "$CELERY_POLICIES_CONSOLE_CREDENTIALS or $CELERY_POLICIES_CONSOLE_TOKEN, or name "
            "the proxy's identity header with --trusted-header", ctx=ctx)
    app = find_app(ctx, app_name, required=False)
    url = broker or (None if app is not None else os.environ.get("CELERY_BROKER_URL"))
    if app is None and not url:
        raise click.UsageError("say where the dead letters are: --app MODULE or --broker URL "
                               "(or set $CELERY_BROKER_URL)", ctx=ctx)
    try:
        site = create_app(app, broker=url, file=path, queues=queues, read_only=read_only,
                          hide_arguments=hide_arguments, auth=auth, refresh=refresh,
                          broker_timeout=broker_timeout(ctx))
    except PolicyError as exc:
        raise click.ClickException(str(exc)) from exc
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
        listener.listen(128)  # connections wait here until uvicorn accepts them
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    click.echo(f"serving the console on http://{shown}:{listener.getsockname()[1]}/"
               + (" (read-only)" if read_only else ""), err=True)
    config = uvicorn.Config(site, log_level="warning", access_log=False)
    uvicorn.Server(config).run(sockets=[listener])
