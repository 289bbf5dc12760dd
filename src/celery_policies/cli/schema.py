"""``celery-policies schema``."""

from __future__ import annotations

import json

import click

from ..model import PolicyFile
from ..reference import render_markdown


@click.command()
@click.option("--format", "fmt", type=click.Choice(["json", "markdown"]), default="json",
              show_default=True, help="JSON Schema for editors, or the Markdown key reference.")
def schema(fmt: str) -> None:
    """Print the JSON Schema of a policy file.

    Save it next to your file and point editors at it with a first line
    `# yaml-language-server: $schema=./policies.schema.json` for completion and inline errors.
    """
    if fmt == "markdown":
        click.echo(render_markdown(), nl=False)
        return
    document = PolicyFile.model_json_schema(mode="validation")
    document["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    document["title"] = "celery-policies file"
    click.echo(json.dumps(document, indent=2, sort_keys=True))
