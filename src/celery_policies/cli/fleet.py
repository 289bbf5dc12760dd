"""``celery-policies fleet``."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import click
from celery import Celery
from rich.table import Table

from ..connections import BrokerError, connected, describe
from ..errors import PolicyFileError
from ..spec.loader import load_policies
from ..tools.fleet import DEFAULT_TIMEOUT, DRIFT, OK, Fleet, Reference, ask, file_reference, judge
from ._common import broker_timeout, broker_timeout_option, console, find_app


@click.command()
@click.option("--app", "app_name", metavar="MODULE",
              help="The Celery app (as for `celery -A`): its broker, and its tasks for --file.")
@click.option("--file", "path", metavar="FILE", type=click.Path(exists=True, dir_okay=False),
              help="The policy file every worker should apply. Without it, the fingerprint "
                   "most workers share is expected.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=DEFAULT_TIMEOUT,
              show_default=True, metavar="SECONDS", help="How long to wait for answers.")
@click.option("--expect", type=click.IntRange(min=1), metavar="N",
              help="Fail unless at least N workers answer.")
@click.option("--workers", "names", metavar="NAMES",
              help="Ask only these workers (comma-separated, as Celery names them: "
                   "name@host); fail unless each one answers.")
@click.option("--json", "as_json", is_flag=True, help="Print the verdict as JSON.")
@broker_timeout_option
@click.pass_context
def fleet(ctx: click.Context, app_name: str | None, path: str | None, timeout: float,
          expect: int | None, names: str | None, as_json: bool) -> None:
    """Ask the running workers which policies they apply; name those that differ.

    Each worker's fingerprint is compared with the one FILE gives the app's tasks, else with
    the one most workers share. Exit 0 when every worker agrees; 1 on drift (another
    fingerprint, no policies loaded, no majority), when fewer workers answer than --expect
    or --workers say, or when the broker cannot be reached; 2 on a usage error, such as an
    invalid FILE.
    """
    app = find_app(ctx, app_name, required=True)
    workers = [name.strip() for name in (names or "").split(",") if name.strip()]
    if expect and workers:
        raise click.UsageError("give --expect or --workers, not both: --workers already says "
                               "who must answer", ctx=ctx)
    reference = _reference(ctx, app, path) if path else None
    wait = broker_timeout(ctx)
    try:
        with connected(app.connection_for_write, wait, describe(app, None)) as connection:
            answers = ask(app, timeout, workers, connection)
    except BrokerError as exc:
        raise click.ClickException(str(exc)) from exc
    verdict = judge(answers, reference, expect=expect or 0, names=workers, timeout=timeout)
    if as_json:
        click.echo(json.dumps(verdict.to_json(), indent=2))
    elif verdict.workers:
        console().print(_table(verdict))
    if not verdict.ok:
        raise click.ClickException(verdict.summary())
    if not as_json:
        click.echo(verdict.summary())


def _reference(ctx: click.Context, app: Celery, path: str) -> Reference:
    try:
        policies = load_policies(path)
    except PolicyFileError as exc:
        for problem in exc.problems:
            click.echo(str(problem), err=True)
        raise click.BadParameter(exc.summary, ctx=ctx, param_hint="'--file'") from exc
    return file_reference(app, policies)


def _table(verdict: Fleet) -> Table:
    reference = verdict.reference
    expected = (f"expected fingerprint {reference.fingerprint} ({reference.source})"
                if reference.fingerprint else reference.source)
    table = Table(title=expected, title_justify="left")
    for column in ("worker", "status", "fingerprint", "file", "celery-policies", "celery",
                   "loaded at (UTC)"):
        table.add_column(column, no_wrap=column in ("worker", "fingerprint"))
    for worker in verdict.workers:
        answer = worker.answer
        status = worker.status.upper() if worker.status == DRIFT else worker.status
        table.add_row(answer.worker, status, answer.fingerprint or "-",
                      answer.file or answer.error or "-", answer.plugin_version or "-",
                      answer.celery_version or "-", _when(answer.loaded_at),
                      style=None if worker.status == OK else "bold red")
    return table


def _when(loaded_at: str | None) -> str:
    if not loaded_at:
        return "-"
    moment = datetime.fromisoformat(loaded_at).astimezone(timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M:%S")
