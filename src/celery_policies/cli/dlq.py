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
from rich.text import Text

from ..connections import describe
from ..deadletters.access import opened
from ..deadletters.envelope import DeadLetter, Publisher
from ..deadletters.stores import Store
from ..deadletters.tools import Filters, ReplayReport, ReplayStopped, plan, purge, replay, select
from ..errors import PolicyError, PolicyFileError
from ..headers import FAILURE_HEADER
from ..location import locate_file
from ..spec.durations import parse_duration
from ..spec.loader import load_policies
from ..spec.model import DEFAULT_DEAD_LETTER_QUEUE
from ._common import broker_timeout, broker_timeout_option, console, find_app
from ._render import cell, printable


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
        with opened(make, describe(app, url), name, timeout) as (store, connection):
            yield store, connection
    except PolicyError as exc:  # the broker (BrokerError) or the size cap's setting
        raise click.ClickException(str(exc)) from exc


def _file_queue(app: Any) -> str:
    path = locate_file(app)
    if path is None:
        return DEFAULT_DEAD_LETTER_QUEUE
    try:
        return load_policies(path).model.dead_letter_queue
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
        if letter.problem is not None:
            table.add_row("-", "(unreadable)", cell(letter.problem), "-", "-", "-")
            continue
        failure = letter.failure
        exception = str(failure.get("exception") or "-").rpartition(".")[2]
        table.add_row(cell(letter.id), cell(letter.task), cell(failure.get("reason") or "-"),
                      cell(exception), cell(failure.get("retries", "-")), cell(_when(letter)))
    return table


def _plural(count: int) -> str:
    return f"{count} dead letter{'' if count == 1 else 's'}"


def _count(letters: Sequence[DeadLetter]) -> str:
    return f"{len(letters)} unreadable entr{'y' if len(letters) == 1 else 'ies'}"


def _problems(letters: Sequence[DeadLetter], shown: int = 3) -> str:
    """``entry 3: not JSON (412 bytes); entry 7: ...``."""
    more = "; ..." if len(letters) > shown else ""
    return printable("; ".join(str(letter.problem) for letter in letters[:shown]) + more)


def _passed_over(letters: Sequence[DeadLetter]) -> None:
    """Say on stderr which unreadable entries the filters passed over."""
    if letters:
        click.echo(f"{_count(letters)} not matched ({_problems(letters)}): no filter "
                   "matches an entry that cannot be read; `dlq purge --unreadable` removes "
                   "them.", err=True)


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
    passed_over: list[DeadLetter] = []
    with _open(ctx, app_name, broker, queue) as (store, _):
        letters = select(store, Filters(task_glob, exceptions, since), passed_over=passed_over)
    _passed_over(passed_over)
    if output == "json":
        click.echo(json.dumps([letter.summary() for letter in letters], indent=2,
                              default=repr))
        return
    out = console()
    out.print(_table(letters))
    broken = sum(letter.problem is not None for letter in letters)
    out.print(Text(f"{_plural(len(letters))} in {printable(store.queue)}"
                   + (f" ({broken} unreadable)" if broken else "")))


@dlq.command()
@click.argument("task_id")
@_source
@click.pass_context
def show(ctx: click.Context, task_id: str, app_name: str | None, broker: str | None,
         queue: str | None) -> None:
    """Everything about the dead letter of task TASK_ID, traceback included."""
    passed_over: list[DeadLetter] = []
    with _open(ctx, app_name, broker, queue) as (store, _):
        letters = select(store, Filters(ids=(task_id,)), passed_over=passed_over)
    if not letters:
        unsearched = (f" ({_count(passed_over)} could not be searched: "
                      f"{_problems(passed_over)})" if passed_over else "")
        raise click.ClickException(printable(f"no dead letter of task {task_id} in "
                                             f"{store.queue}{unsearched}"))
    out = console()
    for letter in letters:
        failure = letter.failure
        args, kwargs = letter.arguments()
        # Text, not str: rich would read markup and :emoji: codes in a str, even with
        # markup=False for the emoji; every field is escaped (docs/deadletters.md#show).
        out.print(Text(printable(f"{letter.task}[{letter.id}]"), style="bold"))
        for key, value in failure.items():
            if key != "traceback":
                out.print(Text(printable(f"  {key}: {value}")))
        out.print(Text(printable(f"  args: {args!r}")))
        out.print(Text(printable(f"  kwargs: {kwargs!r}")))
        headers = {k: v for k, v in letter.envelope.headers.items()
                   if k != FAILURE_HEADER}
        out.print(Text(printable(f"  headers: {json.dumps(headers, default=repr)}")))
        out.print(Text("  traceback:"))
        traceback = failure.get("traceback")
        out.print(Text(printable(str(traceback), lines=True) if traceback
                       else "  (none recorded)"))


@dlq.command(name="replay")
@_source
@_filters
@click.option("--limit", type=click.IntRange(min=1), help="Replay at most N (the oldest).")
@click.option("--to-queue", metavar="QUEUE", help="Publish to QUEUE instead of each "
              "task's original queue.")
@click.option("--new-id", is_flag=True, help="Give each replayed task a new id.")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), metavar="N",
              help="Replay at most N dead letters a second, so that the service that failed "
                   "is not flattened.")
@click.option("--dry-run", is_flag=True, help="Show what would be replayed; change nothing.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def replay_(ctx: click.Context, app_name: str | None, broker: str | None, queue: str | None,
            task_glob: str | None, exceptions: tuple[str, ...], since: float | None,
            limit: int | None, to_queue: str | None, new_id: bool, rate: float | None,
            dry_run: bool, yes: bool) -> None:
    """Put dead letters back on their queue, removing each once its publish is confirmed.

    A replayed task gets a fresh retry budget (retries 0, no eta or expires) and keeps its id
    unless --new-id. At least once: a crash can run a task twice, never lose it. A dead
    letter that cannot be replayed (unreadable, malformed, no queue) stays in the queue and
    is listed on stderr with why; the exit status is then 1 (with --dry-run too).
    """
    with _open(ctx, app_name, broker, queue) as (store, connection):
        passed_over: list[DeadLetter] = []
        letters = select(store, Filters(task_glob, exceptions, since), limit,
                         passed_over=passed_over)
        _passed_over(passed_over)
        if not letters:
            click.echo(f"No dead letters to replay in {printable(store.queue)}.")
            return
        chosen = plan(letters, to_queue, new_id)
        targets = ", ".join(f"{count} to {printable(name)}" for name, count in
                            sorted(chosen.targets().items()))
        skips = f"; {len(chosen.skipped)} to skip" if chosen.skipped else ""
        click.echo(f"{_plural(len(chosen.moves))} to replay from {printable(store.queue)}: "
                   f"{targets or 'none'}{skips}")
        if dry_run:
            console().print(_table([move.letter for move in chosen.moves]))
            _skipped(chosen.skipped, "Would not replay")
            click.echo("Dry run: nothing was published or removed.")
            if chosen.skipped:
                sys.exit(1)
            return
        if chosen.moves and not yes:
            click.confirm("Replay them?", abort=True)
        publisher = Publisher(connection)
        try:
            with _progress(len(chosen.moves)) as tick:
                report = replay(store, publisher, chosen, progress=tick, rate=rate)
        except ReplayStopped as exc:
            _replayed(exc.report, len(letters), store.queue)
            raise click.ClickException(printable(f"{exc}; the rest are still in "
                                                 f"{store.queue}")) from exc
        except PolicyError as exc:
            raise click.ClickException(printable(str(exc))) from exc
        finally:
            if publisher.connection is not connection:
                publisher.close()
    _replayed(report, len(letters), store.queue)
    _skipped(report.skipped, "Not replayed")
    if report.skipped:
        sys.exit(1)


def _replayed(report: ReplayReport, total: int, queue: str) -> None:
    done = ", ".join(f"{count} to {printable(name)}"
                     for name, count in sorted(report.queues.items()))
    click.echo(f"Replayed {report.replayed} of {_plural(total)} ({done or 'none'}); "
               f"removed them from {printable(queue)}.")


def _skipped(skipped: Sequence[tuple[DeadLetter, str]], prefix: str) -> None:
    for letter, why in skipped:
        click.echo(printable(f"{prefix}: {letter.task}[{letter.id}]: {why}"), err=True)


@dlq.command(name="purge")
@_source
@_filters
@click.option("--unreadable", is_flag=True, help="Only the entries that cannot be read "
              "(shown as unreadable by list); takes no filter.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def purge_(ctx: click.Context, app_name: str | None, broker: str | None, queue: str | None,
           task_glob: str | None, exceptions: tuple[str, ...], since: float | None,
           unreadable: bool, yes: bool) -> None:
    """Delete dead letters for good: all of them (unreadable entries too), those the
    filters match, or with --unreadable only the entries that cannot be read."""
    filters = Filters(task_glob, exceptions, since, unreadable=unreadable)
    if unreadable and filters.narrowing:
        raise click.BadParameter("--unreadable takes no filter (--task, --exception, "
                                 "--since): no filter matches an entry that cannot be read",
                                 param_hint="'--unreadable'")
    passed_over: list[DeadLetter] = []
    with _open(ctx, app_name, broker, queue) as (store, _):
        letters = select(store, filters, passed_over=passed_over)
        _passed_over(passed_over)
        click.echo(f"{_plural(len(letters))} match in {printable(store.queue)}.")
        if not letters:
            return
        if not yes:
            click.confirm("Delete them for good?", abort=True)
        deleted = purge(store, letters)
    click.echo(f"Deleted {_plural(deleted)} from {printable(store.queue)}.")


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
