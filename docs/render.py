"""Render the docs pages from docs/_templates/ with the real output of every command shown.

In a template, a line ``@@file PATH`` becomes a link to PATH and its text; a line
``@@run CMD`` becomes ``$ CMD`` followed by what CMD prints (stdout and stderr) when run from
the repository root with the project's .venv first on PATH; ``@@run? CMD`` also shows the exit
status; ``@@run{NAME=value ...} CMD`` sets environment variables for that command.

    .venv/bin/python docs/render.py          # rewrites docs/*.md from docs/_templates/*.md
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = ROOT / "docs" / "_templates"
ENV = dict(os.environ, PATH=f"{ROOT / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}")
ENV.pop("COLUMNS", None)


def run(command: str, extra: dict[str, str]) -> tuple[str, int]:
    done = subprocess.run(["bash", "-c", command], cwd=ROOT, env=dict(ENV, **extra),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          check=False)
    lines = done.stdout.rstrip("\n").split("\n")
    return "\n".join(line.rstrip() for line in lines), done.returncode


def render(text: str) -> str:
    lines = []
    for line in text.split("\n"):
        included = re.match(r"@@file (\S+)$", line)
        if included:
            path = included.group(1)
            body = (ROOT / path).read_text(encoding="utf-8").rstrip("\n")
            link = path.removeprefix("docs/") if path.startswith("docs/") else f"../{path}"
            lines.append(f"[`{path}`]({link}):\n\n```yaml\n{body}\n```")
            continue
        command = re.match(r"@@run(?:\{([^}]*)\})?(\?)? (.+)$", line)
        if command:
            extra = dict(kv.split("=", 1) for kv in (command.group(1) or "").split() if kv)
            output, status = run(command.group(3), extra)
            lines.append(f"$ {command.group(3)}")
            if output:
                lines.append(output)
            if command.group(2):
                lines.append(f"$ echo $?\n{status}")
            print(f"[exit {status}] {command.group(3)}", file=sys.stderr)
            continue
        lines.append(line)
    return "\n".join(lines)


def main() -> None:
    for template in sorted(TEMPLATES.glob("*.md")):
        target = ROOT / "docs" / template.name
        target.write_text(render(template.read_text(encoding="utf-8")), encoding="utf-8")


if __name__ == "__main__":
    main()
