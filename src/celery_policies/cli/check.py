"""``celery-policies check``."""

from __future__ import annotations

import sys

import click

from ..errors import PolicyFileError
from ..lint import lint
from ..lint.pools import ENFORCED
from ..spec.loader import check_exceptions
from ._common import fail_on_problems, find_app, read_policies


@click.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--app", "app_name", metavar="MODULE",
              help="The Celery app (as for `celery -A`): import exception classes, and lint "
                   "each registered task's settings with the app's broker and worker config.")
@click.option("--import", "import_exceptions", is_flag=True,
              help="Import every exception class the file names, without an app.")
@click.option("--pool", type=click.Choice(sorted(ENFORCED)),
              help="The workers' pool (as for `celery worker --pool`): warn about time limits "
                   "it does not enforce.")
@click.option("--strict", is_flag=True, help="Fail (exit 1) on warnings too.")
@click.pass_context
def check(ctx: click.Context, file: str, app_name: str | None, import_exceptions: bool,
          pool: str | None, strict: bool) -> None:
    """Validate FILE: exit 0 when valid, 1 when not (every problem is listed with file:line:col).

    Then lint it: each finding is printed as `file:line:col: CODE warning|info: message`
    (the rules are in docs/lint.md). Rules that need the app's tasks or broker run with
    --app. --strict makes any warning fail the command, for CI pipelines.
    """
    app = find_app(ctx, app_name, required=False)
    policies = read_policies(file)
    if app is not None or import_exceptions:
        problems = check_exceptions(policies)
        if problems:
            fail_on_problems(PolicyFileError(problems))
    findings = lint(policies, app, pool=pool)
    for finding in findings:
        click.echo(str(finding), err=True)
    warnings = sum(f.severity == "warning" for f in findings)
    infos = len(findings) - warnings
    count = len(policies.model.policies)
    summary = f"{file}: valid, {count} polic{'ies' if count != 1 else 'y'}"
    if warnings:
        summary += f", {warnings} warning{'s' if warnings != 1 else ''}"
    if infos:
        summary += f", {infos} info"
    click.echo(summary)
    if strict and warnings:
        click.echo("failing because of warnings (--strict)", err=True)
        sys.exit(1)
