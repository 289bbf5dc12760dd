"""Benchmark: hostile policy files are refused quickly, and accepted regexes match quickly.

Goals (see docs/benchmarks.md):

* a 171 KB file whose one ``<<`` lists a 9,000-key anchor 8,000 times is refused in under
  1 s (it took over 10 s when merged keys were not counted);
* ``re:(a+)+$`` and ``re:(\\w+\\.?)+_task`` are refused in under 10 ms each (matching the
  second against one 34-character name took minutes);
* the slowest regexes the check accepts (a row of quantifiers at the limit) match a
  100-character name that almost matches in under 50 ms.

Run it as ``.venv/bin/python benchmarks/language.py [--rounds N]``. Each figure is the median
of several rounds. PASS/FAIL lines inform; the exit code is 0 either way.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial

from celery_policies import PolicyFileError, parse_policies
from celery_policies.spec.patterns import parse_pattern

CATASTROPHIC = [r"re:(a+)+$", r"re:(\w+\.?)+_task"]
WORST_ACCEPTED = [r"re:.*a.*a.*b", r"re:\w+\w+\w+b", "re:" + "a?" * 19 + "a{19}"]


def merge_bomb(keys: int = 9000, references: int = 8000) -> str:
    lines = ["version: 1", "big: &big", *(f"  k{i}: {i}" for i in range(keys)),
             "policies:", "  - match: a", "    <<: [" + ", ".join(["*big"] * references) + "]"]
    return "\n".join(lines) + "\n"


def median_seconds(action: Callable[[], object], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def refuse_file(text: str) -> None:
    try:
        parse_policies(text, file="bomb.yaml")
    except PolicyFileError:
        return
    raise AssertionError("the file was accepted")


def refuse_pattern(text: str) -> None:
    # parse_pattern caches what it compiles, but not what it refuses: each round checks anew
    try:
        parse_pattern(text)
    except ValueError:
        return
    raise AssertionError(f"{text} was accepted")


def report(label: str, seconds: float, goal: float) -> None:
    verdict = "PASS" if seconds < goal else "FAIL"
    print(f"{verdict}  {label}: {seconds * 1000:.2f} ms (goal < {goal * 1000:.0f} ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    rounds = parser.parse_args().rounds
    bomb = merge_bomb()
    report(f"refusing a {len(bomb) // 1000} KB merge-key bomb",
           median_seconds(lambda: refuse_file(bomb), rounds), 1.0)
    for pattern in CATASTROPHIC:
        report(f"refusing {pattern}",
               median_seconds(partial(refuse_pattern, pattern), rounds), 0.010)
    name = "a" * 100
    for pattern in WORST_ACCEPTED:
        matches = parse_pattern(pattern).matches
        report(f"{pattern[:30]} on a 100-character name",
               median_seconds(partial(matches, name), rounds), 0.050)


if __name__ == "__main__":
    main()
