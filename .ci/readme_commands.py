"""Print the README's commands in the order a user runs them, for .ci/run.

Its sh blocks that start with ``python3`` or ``.venv/`` (the demo, the Redis demo, the test
command), with the inline ``.venv/bin/celery-policies ...`` commands, which install nothing,
right after the first block: they run in the core-only venv that block made.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path


def commands(readme: str) -> list[str]:
    blocks = [block.strip() for block in re.findall(r"```sh\n(.*?)```", readme, re.S)]
    blocks = [block for block in blocks if block.startswith(("python3 ", ".venv/"))]
    inline = re.findall(r"`(\.venv/bin/celery-policies [^`]+)`", readme)
    return [blocks[0], *inline, *blocks[1:]]


if __name__ == "__main__":
    print("\n".join(commands(Path(sys.argv[1]).read_text(encoding="utf-8"))))
