"""Write the version tables of docs/compatibility.md from a real run of the matrix.

    nox                                    # runs the suite and the demo on each Celery
    .venv/bin/python docs/compatibility.py # rewrites the tables from build/matrix/

Reads what ``noxfile.py`` left in ``build/matrix/``: per Celery release, the JUnit XML of the
test suite, the versions the resolver chose and the demo outcomes. Only the text between the
``matrix`` markers of docs/compatibility.md is replaced.
"""

from __future__ import annotations

import json
import re
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "build" / "matrix"
PAGE = ROOT / "docs" / "compatibility.md"
START, END = "<!-- matrix: start -->", "<!-- matrix: end -->"
BROKERS = ("redis", "rabbitmq")
#: The demo's brokers, in the order of noxfile.py's DEMOS.
DEMOS = ("embedded", "redis", "rabbitmq")


def outcome(case: ET.Element) -> str:
    for child in case:
        if child.tag in ("failure", "error"):
            return "failed"
        if child.tag == "skipped":
            return "skipped"
    return "passed"


def counts(xml: Path) -> dict[str, Counter[str]]:
    """Outcomes per column: ``unit``, ``integration (redis)``, per integration module."""
    columns: dict[str, Counter[str]] = {}
    for case in ET.parse(xml).getroot().iter("testcase"):
        module = case.get("classname", "").split(".")
        result = outcome(case)
        if "unit" in module:
            columns.setdefault("unit", Counter())[result] += 1
            continue
        name = next((m.removeprefix("test_") for m in module if m.startswith("test_")), "?")
        broker = next((b for b in BROKERS if f"[{b}" in case.get("name", "")
                       or f"-{b}]" in case.get("name", "") or f"-{b}-" in case.get("name", "")),
                      None)
        # the tests with no broker parameter (a few Sentry tests) run on Redis alone
        column = f"integration ({broker})" if broker else "integration (Redis alone)"
        columns.setdefault(column, Counter())[result] += 1
        columns.setdefault(name, Counter())[result] += 1
    return columns


def cell(counter: Counter[str] | None) -> str:
    if not counter:
        return "-"
    text = f"{counter['passed']}/{counter['failed']}"
    return text + (f" ({counter['skipped']} skipped)" if counter["skipped"] else "")


def tables() -> str:
    records = sorted((json.loads(p.read_text()) for p in RESULTS.glob("celery-*.json")),
                     key=lambda r: tuple(int(x) for x in r["celery"].split(".")))
    if not records:
        sys.exit(f"no results in {RESULTS}: run `nox -s matrix` first")
    runs = {r["celery"]: counts(RESULTS / f"celery-{r['celery']}.xml") for r in records
            if (RESULTS / f"celery-{r['celery']}.xml").exists()}
    summary = ["unit", "integration (redis)", "integration (rabbitmq)",
               "integration (Redis alone)"]
    demos = sorted({k for r in records for k in r["outcomes"] if k.startswith("demo ")},
                   key=lambda k: list(DEMOS).index(k.removeprefix("demo ")))
    lines = ["| celery | kombu | redis-py | billiard | " + " | ".join(summary + demos)
             + " | tested at |", "|" + "---|" * (5 + len(summary) + len(demos))]
    for r in records:
        v, run = r["versions"], runs.get(r["celery"], {})
        row = [v["celery"], v["kombu"], v["redis"], v["billiard"],
               *(cell(run.get(c)) for c in summary),
               *(("ok" if r["outcomes"][d] else "fails") if d in r["outcomes"] else "-"
                 for d in demos),
               ", ".join(f"{kind} {sha}" for kind, sha in r.get("commits", {}).items()) or "-"]
        lines.append("| " + " | ".join(row) + " |")
    modules = sorted({c for run in runs.values() for c in run} - {*summary})
    lines += ["", "Integration tests by module (both brokers):", "",
              "| celery | " + " | ".join(modules) + " |", "|" + "---|" * (1 + len(modules))]
    for r in records:
        run = runs.get(r["celery"], {})
        lines.append(f"| {r['celery']} | " + " | ".join(cell(run.get(m)) for m in modules)
                     + " |")
    lines += ["", "(passed/failed; \"Redis alone\": tests with no broker parameter, a few "
              "Sentry tests, which run on Redis; a demo is `ok` when it ended with \"all as "
              "expected\")"]
    return "\n".join(lines)


def main() -> None:
    page = PAGE.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.S)
    if not pattern.search(page):
        sys.exit(f"{PAGE}: no {START} ... {END} markers")
    PAGE.write_text(pattern.sub(lambda _: f"{START}\n{tables()}\n{END}", page),
                    encoding="utf-8")
    print(f"wrote the tables of {PAGE.relative_to(ROOT)} from {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
