"""``celery-policies schema``."""

from __future__ import annotations

import json

import click

from ..tools.schema import json_schema, render_markdown


@click.command()
@click.option("--format", "fmt", type=click.Choice(["json", "markdown"]), default="json",
              show_default=True, help="JSON Schema for editors, or the Markdown key reference.")
def schema(fmt: str) -> None:
    """Print the JSON Schema of a policy file.

    Save it next to your file and give the file this first line, for completion and inline
    errors in editors that use the YAML language server:

    \b
        # yaml-language-server: $schema=./policies.schema.json
    """
    if fmt == "markdown":
        click.echo(render_markdown(), nl=False)
        return
    click.echo(json.dumps(json_schema(), indent=2, sort_keys=True))
