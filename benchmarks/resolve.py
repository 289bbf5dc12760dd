"""Benchmark: resolving the policy of many tasks, and loading a large policy file.

Goals (see docs/benchmarks.md):

* building a ``Matcher`` for 1,000 policies and resolving 10,000 task names: under 100 ms;
* loading and validating a 1,000-policy file: under 300 ms.

A naive resolver (``fnmatch.fnmatchcase`` against every pattern of every policy) runs in the
same rounds as a baseline. The data is synthetic but deterministic (a seeded ``random.Random``).

Run it as ``.venv/bin/python benchmarks/resolve.py [--rounds N]``. The machine may be shared and
noisy, so each figure is the median of several rounds, and the two resolvers alternate which
goes first. PASS/FAIL lines inform; the exit code is 0 either way.
"""

from __future__ import annotations

import argparse
import fnmatch
import gc
import os
import platform
import random
import re
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from celery_policies import Policies, load_policies, parse_policies
from celery_policies.spec.matching import Matcher

#: Seed of the synthetic data; change it to check a result is not an accident of one data set.
SEED = 20240601
#: 100 apps x 10 modules x 10 tasks = 10,000 task names.
APPS, MODULES, TASKS_PER_MODULE = 100, 10, 10
#: How many policies the generated file holds, by the kind of their first pattern.
POLICY_KINDS = {
    "exact": 400,       # app042.module07.send_email
    "module": 250,      # app042.module07.*
    "app": 100,         # app042.*
    "suffix": 100,      # *.send_email, *_report
    "bracket": 132,     # app042.module0[1-3].*, app04[0-4].*
    "unanchored": 8,    # *.send_*: no literal prefix or suffix, so tested against every name
    "regex": 10,        # re:...: tested against every name too
}
#: Share of policies that list a second pattern (``match: [a, b]``).
SECOND_PATTERN_SHARE = 0.15
#: How many names (drawn at random) the two resolvers must agree on before anything is timed.
CHECK_SAMPLE = 1_000
#: Rounds per measurement; the median is reported.
DEFAULT_ROUNDS = 7
#: The goals, in milliseconds.
RESOLVE_GOAL_MS = 100.0
LOAD_GOAL_MS = 300.0

VERBS = ("send", "sync", "import", "export", "cleanup", "charge", "refund", "render", "index",
         "notify")
NOUNS = ("email", "orders", "invoice", "report", "user", "cache", "webhook", "thumbnail",
         "receipt", "feed")

T = TypeVar("T")
# What the naive resolver returns per task: matched labels (winner last) and merged values.
NaiveResult = tuple[tuple[str, ...], dict[str, Any]]


# --- synthetic data ------------------------------------------------------------------------

def make_task_names(rng: random.Random) -> list[str]:
    """``app042.module07.send_email``-style names: each module has 10 distinct verb_noun tasks."""
    names = []
    for app in range(APPS):
        for module in range(MODULES):
            for verb, noun in rng.sample([(v, n) for v in VERBS for n in NOUNS], TASKS_PER_MODULE):
                names.append(f"app{app:03d}.module{module:02d}.{verb}_{noun}")
    return names


def make_pattern(kind: str, rng: random.Random, names: Sequence[str]) -> str:
    app, module = rng.randrange(APPS), rng.randrange(MODULES)
    verb, noun = rng.choice(VERBS), rng.choice(NOUNS)
    if kind == "exact":
        return rng.choice(names)
    if kind == "module":
        return f"app{app:03d}.module{module:02d}.*"
    if kind == "app":
        return f"app{app:03d}.*"
    if kind == "suffix":
        return f"*_{noun}" if rng.random() < 0.1 else f"*.{verb}_{noun}"
    if kind == "bracket":
        low = rng.randrange(8)
        return rng.choice([f"app{app:03d}.module0[{low}-{low + 2}].*",
                           f"app0{app // 10}[0-4].*",
                           f"app{app:03d}.module{module:02d}.[!s]*"])
    if kind == "unanchored":
        return rng.choice([f"*.{verb}_*", f"*{noun}*", f"*.module0?.{verb}_*"])
    if kind == "regex":
        return rf"re:app0[{app // 10}-9]\d\.module0[0-{module}]\.{verb}_.*"
    raise ValueError(f"unknown pattern kind {kind!r}")


def make_settings(rng: random.Random) -> dict[str, Any]:
    """Two to four groups of keys, as a real policy sets them."""
    groups: list[dict[str, Any]] = [
        {"max_retries": rng.randint(0, 10)},
        {"retry_backoff": rng.choice(["1s", "2s", "5s"]), "retry_backoff_max": "10m"},
        {"time_limit": "5m", "soft_time_limit": "4m"},
        {"acks_late": rng.random() < 0.5},
        {"autoretry_for": ["ConnectionError"] + (["TimeoutError"] if rng.random() < 0.5 else [])},
        {"rate_limit": rng.choice(["10/s", "100/m"])},
        {"retry_jitter": rng.choice(["full", "equal"])},
    ]
    settings: dict[str, Any] = {}
    for group in rng.sample(groups, rng.randint(2, 4)):
        settings.update(group)
    return settings


def make_policy_file(rng: random.Random, names: Sequence[str]) -> bytes:
    """A version 1 policy file with ``defaults:`` and the ``POLICY_KINDS`` mix of policies."""
    kinds = [kind for kind, count in POLICY_KINDS.items() for _ in range(count)]
    rng.shuffle(kinds)
    policies = []
    for index, kind in enumerate(kinds):
        patterns = [make_pattern(kind, rng, names)]
        if rng.random() < SECOND_PATTERN_SHARE:
            patterns.append(make_pattern(rng.choice(["exact", "module"]), rng, names))
        policy: dict[str, Any] = {"name": f"{kind}-{index}"} if index % 2 else {}
        policy["match"] = patterns[0] if len(patterns) == 1 else patterns
        policy.update(make_settings(rng))
        policies.append(policy)
    document = {
        "version": 1,
        "defaults": {"max_retries": 3, "retry_backoff": "1s", "time_limit": "10m",
                     "soft_time_limit": "9m"},
        "policies": policies,
    }
    return yaml.safe_dump(document, sort_keys=False).encode()


# --- the naive baseline --------------------------------------------------------------------

@dataclass(frozen=True)
class NaivePolicy:
    label: str
    patterns: list[tuple[str | re.Pattern[str], tuple[int, int]]]  # (glob or re:, specificity)
    settings: dict[str, Any]


_BRACKET_OR_WILDCARD = re.compile(r"\[!?\]?[^\]]*\]|[*?]")


def naive_specificity(text: str) -> tuple[int, int]:
    """The documented order: exact name > glob with more literal characters > ``re:``."""
    if text.startswith("re:"):
        return (0, 0)
    if not any(char in text for char in "*?["):
        return (2, len(text))
    return (1, len(_BRACKET_OR_WILDCARD.sub("", text)))


def naive_pattern(text: str) -> str | re.Pattern[str]:
    return re.compile(text[3:]) if text.startswith("re:") else text


def naive_resolve_all(policies: Policies, names: Sequence[str]) -> dict[str, NaiveResult]:
    """What one writes without an index: test every pattern of every policy against each name."""
    model = policies.model
    defaults = model.defaults.set_values() if model.defaults else {}
    table = []
    for index, policy in enumerate(model.policies):
        settings = policy.set_values()
        settings.pop("match")
        settings.pop("name", None)
        patterns = [(naive_pattern(text), naive_specificity(text)) for text in policy.match]
        table.append(NaivePolicy(model.label(index), patterns, settings))
    resolved = {}
    for name in names:
        matched: list[tuple[tuple[int, int], int]] = []
        for index, entry in enumerate(table):
            best = None
            for pattern, spec in entry.patterns:
                if isinstance(pattern, str):
                    hit = fnmatch.fnmatchcase(name, pattern)
                else:
                    hit = pattern.fullmatch(name) is not None
                if hit and (best is None or spec > best):
                    best = spec
            if best is not None:
                matched.append((best, index))
        matched.sort()  # least specific first, file order on a tie: the winner is applied last
        merged = dict(defaults)
        for _, index in matched:
            merged.update(table[index].settings)
        resolved[name] = (tuple(table[index].label for _, index in matched), merged)
    return resolved


# --- measuring -----------------------------------------------------------------------------

def timed(function: Callable[[], T]) -> tuple[float, T]:
    """Seconds ``function`` took, and its result; garbage from earlier runs is collected first."""
    gc.collect()
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def time_matcher(policies: Policies, names: Sequence[str]) -> tuple[float, float]:
    """Seconds to build a ``Matcher``, and to resolve every name with it."""
    build_s, matcher = timed(lambda: Matcher(policies))
    resolve_s, _ = timed(lambda: matcher.resolve_all(names))
    return build_s, resolve_s


def check_agreement(matcher: Matcher, naive: dict[str, NaiveResult],
                    names: Sequence[str]) -> None:
    """Stop if the resolvers disagree on any name: their timings would not be comparable.

    Both of the Matcher's paths are checked: ``resolve`` (one name) and ``resolve_all`` (the
    batch, which is what is timed).
    """
    batch = matcher.resolve_all(names)
    for name in names:
        ours = matcher.resolve(name)
        if batch[name] != ours:
            sys.exit(f"resolve_all and resolve disagree on {name}")
        values = {key: setting.value for key, setting in ours.settings.items()}
        if (ours.matched, values) != naive[name]:
            sys.exit(f"the resolvers disagree on {name}:\n  Matcher: {ours.matched} {values}\n"
                     f"  naive:   {naive[name][0]} {naive[name][1]}")


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.1f} ms"


def spread(samples: Sequence[float]) -> str:
    """Median, then min..max, of ``samples`` (seconds)."""
    return (f"{ms(statistics.median(samples))}  "
            f"(min {min(samples) * 1000:.1f}, max {max(samples) * 1000:.1f})")


def verdict(what: str, seconds: float, goal_ms: float) -> str:
    result = "PASS" if seconds * 1000 < goal_ms else "FAIL"
    return f"{result}: {what} {seconds * 1000:.1f} ms, goal < {goal_ms:.0f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS, help="rounds per figure")
    rounds = parser.parse_args().rounds

    rng = random.Random(SEED)
    names = make_task_names(rng)
    source = make_policy_file(rng, names)
    # The first parse in a process is what a worker pays at start-up: no cache is warm yet.
    first_parse_s, policies = timed(lambda: parse_policies(source, file="bench.yaml"))
    pattern_count = sum(len(policy.match) for policy in policies.model.policies)
    print(f"Python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs, "
          f"{rounds} rounds, seed {SEED}")
    print(f"data: {len(names):,} task names; {len(policies.model.policies):,} policies with "
          f"{pattern_count:,} patterns; a {len(source) / 1024:.0f} KiB file")
    print("policies by first pattern: " + ", ".join(f"{kind} {count}"
                                                    for kind, count in POLICY_KINDS.items()))

    # Check once, outside the timings, that both resolvers give the same answers.
    sample = rng.sample(names, CHECK_SAMPLE)
    naive = naive_resolve_all(policies, sample)
    check_agreement(Matcher(policies), naive, sample)
    per_name = Counter(len(labels) for labels, _ in naive.values())
    mean = sum(n * count for n, count in per_name.items()) / len(sample)
    print(f"check: Matcher and naive agree on {len(sample):,} sampled names (labels, order and "
          f"values); a name matches {mean:.1f} policies on average, {per_name[0]} match none")

    bench_resolving(policies, names, rounds)
    bench_loading(source, first_parse_s, rounds)


def bench_resolving(policies: Policies, names: Sequence[str], rounds: int) -> None:
    """Time the ``Matcher`` and the naive baseline, taking turns to go first; print the medians."""
    build: list[float] = []
    resolve: list[float] = []
    ours: list[float] = []
    baseline: list[float] = []
    for round_ in range(rounds):
        for which in ("ours", "naive") if round_ % 2 == 0 else ("naive", "ours"):
            if which == "ours":
                build_s, resolve_s = time_matcher(policies, names)
                build.append(build_s)
                resolve.append(resolve_s)
                ours.append(build_s + resolve_s)
            else:
                baseline.append(timed(lambda: naive_resolve_all(policies, names))[0])
    print(f"\nResolving {len(names):,} task names against "
          f"{len(policies.model.policies):,} policies")
    print(f"  Matcher(policies)               {spread(build)}")
    print(f"  matcher.resolve_all(names)      {spread(resolve)}")
    print(f"  build + resolve                 {spread(ours)}")
    print(f"  naive fnmatch over every policy {spread(baseline)}")
    ratio = statistics.median(baseline) / statistics.median(ours)
    print(f"  naive / ours                    {ratio:8.1f} x")
    print(f"  {verdict('build + resolve, median', statistics.median(ours), RESOLVE_GOAL_MS)}")


def bench_loading(source: bytes, first_parse_s: float, rounds: int) -> None:
    """Time ``parse_policies`` on bytes and ``load_policies`` on a file; print the medians."""
    parse: list[float] = []
    load: list[float] = []
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory, "bench.yaml")
        path.write_bytes(source)
        for _ in range(rounds):
            parse.append(timed(lambda: parse_policies(source, file="bench.yaml"))[0])
            load.append(timed(lambda: load_policies(path))[0])
    print(f"\nLoading and validating the same file ({len(source) / 1024:.0f} KiB)")
    print(f"  parse_policies(bytes), 1st call {ms(first_parse_s)}  (one sample, cold caches)")
    print(f"  parse_policies(bytes)           {spread(parse)}")
    print(f"  load_policies(path)             {spread(load)}")
    print(f"  {verdict('parse_policies, 1st call', first_parse_s, LOAD_GOAL_MS)}")
    print(f"  {verdict('parse_policies, median', statistics.median(parse), LOAD_GOAL_MS)}")
    print(f"  {verdict('load_policies, median', statistics.median(load), LOAD_GOAL_MS)}")


if __name__ == "__main__":
    main()
