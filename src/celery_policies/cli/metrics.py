"""``celery-policies metrics serve``: the dead-letter exporter."""

from __future__ import annotations

import click
from kombu.connection import Connection

from ..connections import connect, describe
from ..errors import PolicyError, PolicyFileError
from ..location import locate_file
from ..metrics.exporter import (
    DEFAULT_ADDRESS,
    DEFAULT_INTERVAL,
    DEFAULT_PORT,
    SERVING_LINE,
    DeadLetterCache,
    require_client,
    serve,
)
from ..metrics.queues import QueueReader, dead_letter_queues
from ..spec.durations import format_duration, parse_duration
from ..spec.loader import load_policies
from ._common import broker_timeout, broker_timeout_option, fail_on_problems, find_app


@click.group()
def metrics() -> None:
    """Prometheus metrics of the dead-letter queues (the workers serve their own)."""


def _interval(ctx: click.Context, param: click.Parameter, value: str) -> float:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


@metrics.command(name="serve")
@click.option("--app", "app_name", metavar="MODULE",
              help="The Celery app (the module `celery -A` takes): its broker.")
@click.option("--file", "path", metavar="FILE", type=click.Path(exists=True, dir_okay=False),
              help="The policy file whose dead-letter queues are read (default: as the "
                   "worker finds it: $CELERY_POLICIES_FILE, the app's policies_file, "
                   "./policies.yaml).")
@click.option("--queue", "queues", metavar="QUEUE", multiple=True,
              help="Read this dead-letter queue too (repeatable).")
@click.option("--address", default=DEFAULT_ADDRESS, show_default=True, metavar="ADDRESS",
              help="The address to serve on.")
@click.option("--port", type=click.IntRange(0, 65535), default=DEFAULT_PORT,
              show_default=True, help="The port to serve on; 0 picks a free one.")
@click.option("--interval", default=format_duration(DEFAULT_INTERVAL), show_default=True,
              metavar="DURATION", callback=_interval,
              help="Read the broker at most once per DURATION (15s, 1m); scrapes in between "
                   "get the last figures.")
@click.option("--rabbitmq-age", is_flag=True,
              help="On RabbitMQ, also read the age of each queue's oldest letter. RabbitMQ "
                   "counts that read as a delivery (docs/metrics.md); quorum queues are "
                   "then left alone.")
@broker_timeout_option
@click.pass_context
def serve_(ctx: click.Context, app_name: str | None, path: str | None,
           queues: tuple[str, ...], address: str, port: int, interval: float,
           rabbitmq_age: bool) -> None:
    """Serve how many dead letters each queue holds, and how old the oldest is, for
    Prometheus; read without taking any letter out.

    The queues are the policy file's dead_letter.queue and every queue its on_failure routes
    name, and each --queue. Runs until interrupted.
    """
    app = find_app(ctx, app_name, required=True)
    file = locate_file(app, path)
    try:
        model = load_policies(file).model if file is not None else None
    except PolicyFileError as exc:
        fail_on_problems(exc)
    timeout = broker_timeout(ctx)
    where = describe(app, None)

    def connection() -> Connection:
        return connect(app.connection_for_write, timeout, where)

    try:
        require_client()
        reader = QueueReader(connection, dead_letter_queues(model, queues),
                             rabbitmq_age=rabbitmq_age)
        cache = DeadLetterCache(reader.read, reader.queues, interval, timeout)
        server = serve(cache, address, port)
    except PolicyError as exc:
        raise click.ClickException(str(exc)) from exc
    host = f"[{address}]" if ":" in address else address
    click.echo(SERVING_LINE.format(address=host, port=server.server_address[1]), err=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass  # Ctrl-C: the normal way to stop it
    finally:
        server.server_close()
