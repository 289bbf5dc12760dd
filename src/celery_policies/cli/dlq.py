"""``celery-policies dlq``: list, show, replay and purge dead letters."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any

import click
from kombu.connection import Connection
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from ..connections import BrokerError, broker_errors, connect, describe, drop, talking
from ..deadletter import DeadLetter, Publisher
from ..dlq import Filters, purge, replay, select, targets
from ..durations import parse_duration
from ..errors import PolicyError, PolicyFileError
from ..explain import dead_letter_queue
from ..loader import load_policies
from ..model import DEFAULT_DEAD_LETTER_QUEUE
from ..runtime import locate_file
from ..stores import Store, open_store
from ._common import broker_timeout, broker_timeout_option, console, find_app


def _source(command: Callable[..., Any]) -> Callable[..., Any]:
    """Where the dead letters are: --app / --broker, --queue."""
    for option in reversed((
        click.option("--app", "app_name", metavar="MODULE",
                     help="The Celery app (the module `celery -A` takes): its broker."),
        click.option("--broker", metavar="URL",
                     help="The broker URL, instead of the app's (also $CELERY_BROKER_URL)."),
        click.option("--queue", metavar="QUEUE",
                     help="The dead-letter queue (default: dead_letter.queue of the policy "
                          f"file, else {DEFAULT_DEAD_LETTER_QUEUE})."),
        broker_timeout_option,
    )):
        command = option(command)
    return command


def _filters(command: Callable[..., Any]) -> Callable[..., Any]:
    """Which dead letters: --task, --exception, --since."""
    for option in reversed((
        click.option("--task", "task_glob", metavar="GLOB", help="Task names matching GLOB."),
        click.option("--exception", "exceptions", metavar="TYPE", multiple=True,
                     help="Exception class, dotted or bare name (repeatable)."),
        click.option("--since", metavar="DURATION", callback=_duration,
                     help="Failed within the last DURATION (30m, 2h, 1d)."),
    )):
        command = option(command)
    return command


def _duration(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = parse_duration(value)
        datetime.now(timezone.utc) - timedelta(seconds=seconds)  # representable?
    except OverflowError as exc:
        raise click.BadParameter(f"{value!r} reaches back before the year 1") from exc
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    return seconds


@contextmanager
def _open(ctx: click.Context, app_name: str | None, broker: str | None,
          queue: str | None) -> Iterator[tuple[Store, Connection]]:
    app = find_app(ctx, app_name, required=False)
    url = broker or (None if app is not None else os.environ.get("CELERY_BROKER_URL"))
    if not url and app is None:
        raise click.UsageError("say where the dead letters are: --app MODULE or --broker "
                               "URL (or set $CELERY_BROKER_URL)", ctx=ctx)
    name = queue or _file_queue(app)
    timeout = broker_timeout(ctx)
    if url:
        def make() -> Connection:
            return Connection(url)
    else:
        assert app is not None
        make = app.connection_for_write
    try:
        where = describe(app, url)
        connection = connect(make, timeout, where)
        try:
            with talking(connection, timeout, where):
                store = open_store(connection, name)
        except BaseException:
            drop(connection)
            raise
    except PolicyError as exc:
        raise click.ClickException(str(exc)) from exc
    try:
        with talking(connection, timeout, where):
            try:
                yield store, connection
            except broker_errors(connection):
                raise  # no goodbyes to a broker that does not answer: dropped below
            except BaseException:
                store.close()
                raise
            store.close()
    except BrokerError as exc:
        drop(connection)
        raise click.ClickException(str(exc)) from exc
    except BaseException:
        connection.release()
        raise
    connection.release()


def _file_queue(app: Any) -> str:
    path = locate_file(app)
    if path is None:
        return DEFAULT_DEAD_LETTER_QUEUE
    try:
        return dead_letter_queue(load_policies(path))
    except PolicyFileError as exc:
        raise click.ClickException(f"{exc.summary}; name the queue with --queue") from exc


def _when(letter: DeadLetter) -> str:
    failed_at = letter.failed_at
    return failed_at.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S") if failed_at else "-"


def _table(letters: Sequence[DeadLetter]) -> Table:
    table = Table()
    for column in ("id", "task", "reason", "exception", "retries", "failed at (UTC)"):
        table.add_column(column, no_wrap=column == "id")
    for letter in letters:
        failure = letter.failure
        exception = str(failure.get("exception") or "-").rpartition(".")[2]
        table.add_row(letter.id, letter.task, str(failure.get("reason") or "-"), exception,
                      str(failure.get("retries", "-")), _when(letter))
    return table


def _plural(count: int) -> str:
    return f"{count} dead letter{'' if count == 1 else 's'}"


@click.group()
def dlq() -> None:
    """List, show, replay and purge dead letters (on Redis, RabbitMQ or kombu's filesystem
    transport). Reading never takes a message out of the queue."""


@dlq.command(name="list")
@_source
@_filters
@click.option("--format", "output", type=click.Choice(["table", "json"]), default="table",
              show_default=True, help="A table, or a JSON array (with args and kwargs).")
@click.pass_context
def list_(ctx: click.Context, app_name: str | None, broker: str | None, queue: str | None,
          task_glob: str | None, exceptions: tuple[str, ...], since: float | None,
          output: str) -> None:
    """List dead letters, oldest first, without removing any."""
    with _open(ctx, app_name, broker, queue) as (store, _):
        letters = select(store, Filters(task_glob, exceptions, since))
    if output == "json":
        click.echo(json.dumps([letter.summary() for letter in letters], indent=2,
                              default=repr))
        return
    out = console()
    out.print(_table(letters))
    out.print(f"{_plural(len(letters))} in {store.queue}")


@dlq.command()
@click.argument("task_id")
@_source
@click.pass_context
def show(ctx: click.Context, task_id: str, app_name: str | None, broker: str | None,
         queue: str | None) -> None:
    """Everything about the dead letter of task TASK_ID, traceback included."""
    with _open(ctx, app_name, broker, queue) as (store, _):
        letters = select(store, Filters(ids=(task_id,)))
    if not letters:
        raise click.ClickException(f"no dead letter of task {task_id} in {store.queue}")
    out = console()
    for letter in letters:
        failure = letter.failure
        args, kwargs = letter.arguments()
        out.print(f"{letter.task}[{letter.id}]", style="bold", markup=False)
        for key, value in failure.items():
            if key != "traceback":
                out.print(f"  {key}: {value}", markup=False)
        out.print(f"  args: {args!r}", markup=False)
        out.print(f"  kwargs: {kwargs!r}", markup=False)
        headers = {k: v for k, v in letter.envelope.headers.items()
                   if k != "celery_policies_failure"}
        out.print(f"  headers: {json.dumps(headers, default=repr)}", markup=False)
        out.print("  traceback:")
        out.print(failure.get("traceback") or "  (none recorded)", markup=False)


@dlq.command(name="replay")
@_source
@_filters
@click.option("--limit", type=click.IntRange(min=1), help="Replay at most N (the oldest).")
@click.option("--to-queue", metavar="QUEUE", help="Publish to QUEUE instead of each "
              "task's original queue.")
@click.option("--new-id", is_flag=True, help="Give each replayed task a new id.")
@click.option("--dry-run", is_flag=True, help="Show what would be replayed; change nothing.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def replay_(ctx: click.Context, app_name: str | None, broker: str | None, queue: str | None,
            task_glob: str | None, exceptions: tuple[str, ...], since: float | None,
            limit: int | None, to_queue: str | None, new_id: bool, dry_run: bool,
            yes: bool) -> None:
    """Put dead letters back on their queue, removing each once its publish is confirmed.

    A replayed task gets a fresh retry budget (retries 0, no eta or expires) and keeps its id
    unless --new-id. At least once: a crash can run a task twice, never lose it.
    """
    with _open(ctx, app_name, broker, queue) as (store, connection):
        letters = select(store, Filters(task_glob, exceptions, since), limit)
        if not letters:
            click.echo(f"No dead letters to replay in {store.queue}.")
            return
        plan = ", ".join(f"{count} to {name}" for name, count in
                         sorted(targets(letters, to_queue).items()))
        click.echo(f"{_plural(len(letters))} to replay from {store.queue}: {plan}")
        if dry_run:
            console().print(_table(letters))
            click.echo("Dry run: nothing was published or removed.")
            return
        if not yes:
            click.confirm("Replay them?", abort=True)
        publisher = Publisher(connection)
        try:
            with _progress(len(letters)) as tick:
                report = replay(store, publisher, letters, to_queue=to_queue, new_id=new_id,
                                progress=tick)
        except PolicyError as exc:
            raise click.ClickException(str(exc)) from exc
        finally:
            if publisher.connection is not connection:
                publisher.close()
    done = ", ".join(f"{count} to {name}" for name, count in sorted(report.queues.items()))
    click.echo(f"Replayed {report.replayed} of {_plural(len(letters))} ({done or 'none'}); "
               f"removed them from {store.queue}.")
    for letter, why in report.skipped:
        click.echo(f"Not replayed: {letter.task}[{letter.id}]: {why}", err=True)
    if report.skipped:
        sys.exit(1)


@dlq.command(name="purge")
@_source
@_filters
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def purge_(ctx: click.Context, app_name: str | None, broker: str | None, queue: str | None,
           task_glob: str | None, exceptions: tuple[str, ...], since: float | None,
           yes: bool) -> None:
    """Delete dead letters for good (all of them, or those the filters match)."""
    with _open(ctx, app_name, broker, queue) as (store, _):
        letters = select(store, Filters(task_glob, exceptions, since))
        click.echo(f"{_plural(len(letters))} match in {store.queue}.")
        if not letters:
            return
        if not yes:
            click.confirm("Delete them for good?", abort=True)
        deleted = purge(store, letters)
    click.echo(f"Deleted {_plural(deleted)} from {store.queue}.")


@contextmanager
def _progress(total: int) -> Iterator[Callable[[int], None]]:
    """A progress bar on a terminal; elsewhere (CI logs, pipes) a line every tenth."""
    if sys.stderr.isatty():
        with Progress(console=Console(stderr=True), transient=False) as bar:
            job = bar.add_task("replaying", total=total)
            yield lambda done: bar.update(job, completed=done)
        return
    step = max(1, total // 10)

    def tick(done: int) -> None:
        if done % step == 0 or done == total:
            click.echo(f"replayed {done}/{total}", err=True)

    yield tick
