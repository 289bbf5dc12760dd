"""``celery-policies check``."""

from __future__ import annotations

import sys

import click

from ..appinfo import registered_tasks
from ..durations import format_duration
from ..errors import PolicyFileError
from ..explain import coverage, explain, limit_conflicts
from ..loader import check_exceptions
from ..matching import Matcher
from ._common import fail_on_problems, find_app, read_policies


@click.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--app", "app_name", metavar="MODULE",
              help="The Celery app (as for `celery -A`): import exception classes and match "
                   "patterns against its registered tasks.")
@click.option("--import", "import_exceptions", is_flag=True,
              help="Import every exception class the file names, without an app.")
@click.option("--strict", is_flag=True, help="Fail (exit 1) on warnings too.")
@click.pass_context
def check(ctx: click.Context, file: str, app_name: str | None, import_exceptions: bool,
          strict: bool) -> None:
    """Validate FILE: exit 0 when valid, 1 when not (every problem is listed with file:line:col).

    With --app, also warn about patterns that match no registered task and tasks that no
    policy matches; --strict turns those warnings into failure, for CI pipelines.
    """
    app = find_app(ctx, app_name, required=False)
    policies = read_policies(file)
    if app is not None or import_exceptions:
        problems = check_exceptions(policies)
        if problems:
            fail_on_problems(PolicyFileError(problems))
    warnings = []
    if app is not None:
        names = list(registered_tasks(app))
        found = coverage(policies, Matcher(policies), names)
        warnings += [f"{file}:{line}:{col}: warning: policies[{index}] pattern {text!r} matches "
                     f"no registered task" for index, text, (line, col) in found.unmatched]
        fallback = "only defaults" if policies.model.defaults else "no setting from this file"
        warnings += [f"{file}: warning: no policy matches task {name!r} (it gets {fallback})"
                     for name in found.uncovered]
        for name, soft, hard in limit_conflicts(explain(Matcher(policies), names, app,
                                                         registered_tasks(app))):
            warnings.append(
                f"{file}: warning: task {name!r} gets soft_time_limit "
                f"{format_duration(soft.value)} from {soft.source} but time_limit "
                f"{format_duration(hard.value)} from {hard.source}: the hard limit kills it "
                "before the soft one fires")
    for warning in warnings:
        click.echo(warning, err=True)
    count = len(policies.model.policies)
    summary = f"{file}: valid, {count} polic{'ies' if count != 1 else 'y'}"
    if warnings:
        summary += f", {len(warnings)} warning{'s' if len(warnings) != 1 else ''}"
    click.echo(summary)
    if strict and warnings:
        click.echo("failing because of warnings (--strict)", err=True)
        sys.exit(1)
