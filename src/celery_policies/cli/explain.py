"""``celery-policies explain``."""

from __future__ import annotations

import fnmatch
import json

import click
from rich.table import Table

from ..appinfo import registered_tasks
from ..spec.matching import Matcher
from ..tools.explain import explain as explain_tasks
from ..tools.explain import to_json
from ..tools.wording import human
from ._common import console, find_app, read_policies


@click.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.argument("task_pattern", required=False)
@click.option("--app", "app_name", metavar="MODULE", help="The Celery app (as for `celery -A`).")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table",
              show_default=True)
@click.pass_context
def explain(ctx: click.Context, file: str, task_pattern: str | None, app_name: str | None,
            fmt: str) -> None:
    """Show each task's effective settings and where each one comes from.

    With --app, every registered task (or those matching the glob TASK_PATTERN) is shown, with
    the values its code sets. Without an app, TASK_PATTERN is taken as one task name.
    """
    out = console()
    app = find_app(ctx, app_name, required=False)
    policies = read_policies(file)
    matcher = Matcher(policies)
    if app is not None:
        tasks = registered_tasks(app)
        names = [n for n in tasks if task_pattern is None or fnmatch.fnmatchcase(n, task_pattern)]
        if not names:
            raise click.ClickException(f"no registered task matches {task_pattern!r}")
    elif task_pattern is None:
        raise click.UsageError("give --app MODULE, or the name of the task to explain", ctx=ctx)
    elif set(task_pattern) & set("*?["):
        raise click.UsageError(f"without --app, give one task name, not a pattern "
                               f"({task_pattern!r}): the task names come from the app", ctx=ctx)
    else:
        tasks, names = {}, [task_pattern]
    explanations = explain_tasks(matcher, names, app, tasks)
    queue = policies.model.dead_letter_queue
    if fmt == "json":
        click.echo(json.dumps(to_json(policies, explanations), indent=2))
        return
    for item in explanations:
        matched = ", ".join(item.matched) if item.matched else "no policy (defaults only)"
        table = Table(title=f"{item.task}  [dim]matched: {matched}[/dim]", title_justify="left")
        table.add_column("setting")
        table.add_column("value")
        table.add_column("source")
        for key, (setting, overridden) in item.settings.items():
            source = str(setting.source)
            value = human(key, setting.value, dead_letter_queue=queue)
            if setting.value is None and setting.source.from_file:
                value = "none (no limit)"
            if overridden is not None:
                source += (f" [yellow](overrides {overridden.source}: "
                           f"{human(key, overridden.value)})[/yellow]")
            style = None if setting.source.from_file else "dim"
            table.add_row(key, value, source, style=style)
        out.print(table)
    out.print("[dim]Time limits given by the sender (apply_async(time_limit=...)) travel in the "
              "message headers and win over these.[/dim]")
