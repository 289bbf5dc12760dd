"""``celery-policies simulate``."""

from __future__ import annotations

import click
from rich.table import Table

from ..appinfo import registered_tasks
from ..spec.durations import format_duration
from ..spec.matching import Matcher
from ..tools.simulate import DEFAULT_ATTEMPTS, simulate_task
from ..tools.wording import OUTCOMES, delay_range
from ._common import console, find_app, read_policies


@click.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--task", "task_name", required=True, help="The task name.")
@click.option("--raise", "exception", required=True, metavar="EXCEPTION",
              help="The exception class the task keeps raising (dotted path or builtin name).")
@click.option("--app", "app_name", metavar="MODULE",
              help="The Celery app: imports its exceptions and reads the task's own settings.")
@click.option("--import", "import_modules", is_flag=True,
              help="Import the exception classes named (running their modules' code), "
                   "without an app.")
@click.option("--attempts", type=click.IntRange(1, 1000), default=DEFAULT_ATTEMPTS,
              show_default=True, help="Show at most this many attempts.")
@click.pass_context
def simulate(ctx: click.Context, file: str, task_name: str, exception: str,
             app_name: str | None, import_modules: bool, attempts: int) -> None:
    """Print the attempt-by-attempt timeline of a task that keeps raising EXCEPTION.

    Nothing runs: the delays come from the same arithmetic the worker uses, with jitter shown
    as a range. Attempts are assumed to fail at once; add your task's run time to each.
    Without --app or --import nothing is imported: exception classes are matched by name.
    """
    out = console()
    app = find_app(ctx, app_name, required=False)
    policies = read_policies(file)
    task = registered_tasks(app).get(task_name) if app is not None else None
    if app is not None and task is None:
        raise click.BadParameter(f"the app has no task {task_name!r}", param_hint="'--task'")
    imports = app is not None or import_modules
    line = simulate_task(Matcher(policies), task_name, exception, attempts=attempts, app=app,
                         task=task, import_modules=imports)
    matched = ", ".join(line.matched) or "no policy (defaults only)"
    out.print(f"{line.task} raising {line.exception}  [dim]matched: {matched}[/dim]")
    if not line.exception_imported:
        why = ("could not be imported" if imports
               else "was not imported (give --import to import it)")
        out.print(f"[yellow]note: {line.exception} {why}; treated as a direct subclass of "
                  "Exception[/yellow]")
    table = Table()
    table.add_column("attempt", justify="right")
    table.add_column("starts after")
    table.add_column("outcome")
    table.add_column("next attempt in")
    for step in line.steps:
        table.add_row(str(step.attempt), delay_range(step.start), OUTCOMES[step.outcome],
                      delay_range(step.delay) if step.delay else "-")
    out.print(table)
    limits = ", ".join(f"{name} {format_duration(value)}" for name, value in (
        ("soft_time_limit", line.soft_time_limit), ("time_limit", line.time_limit)) if value)
    if limits:
        out.print(f"Each attempt runs under {limits}.")
    if line.gave_up is None:
        out.print(f"Still retrying after {len(line.steps)} attempts (see --attempts).")
        return
    maybe = [step.attempt for step in line.steps if step.outcome == "maybe"]
    if maybe:
        out.print(f"Gives up after attempt {maybe[0]} to {len(line.steps)}, depending on jitter "
                  "and the deadline.")
    else:
        out.print(f"Gives up after attempt {len(line.steps)}.")
    if not line.routes:
        out.print("Failure routes: none (the failure stays in the result backend and the log).")
    for kind, target in line.routes:
        what = f"dead letter to queue {target}" if kind == "dead_letter" else f"task {target}"
        out.print(f"Failure route: {what}")
