"""What the peer benchmarks share: each side runs in a child process of its own (so its peak
resident memory is its own), reports one ``RESULT {json}`` line, and leaves no files behind; the
rounds alternate the sides (the first one swaps every round, so a slow spell of a shared machine
falls on both), and every figure is summarised the same way: each side's minimum, median and
maximum over the rounds, and the ratio of the medians.

    results = run_rounds(__file__, ["--steps=3"], 3, ("tether", "trl"), threads=2)   # parent
    report({"seconds": 1.0})                                                          # child, last thing it does
    print_summary(results, "tokens_per_second", "tok/s")                              # parent, after the rounds
"""

from __future__ import annotations

import atexit
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence

ROUNDS = 3  # every peer benchmark's default: a median needs at least three


def scratch_dir(prefix: str) -> str:
    """A fresh temporary directory, removed when this process exits (checkpoints of the default
    model are about 1 GB each: a benchmark that kept them filled the disk)."""
    path = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def report(result: dict) -> None:
    """Add this process's peak resident memory and print the line ``run_side`` reads."""
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result), flush=True)


def run_side(script: str, side: str, argv: list[str], threads: int) -> dict:
    """Run ``script --side side *argv`` in a child process and return its RESULT; exit on failure."""
    cmd = [sys.executable, script, "--side", side, *argv]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    line = [entry for entry in proc.stdout.splitlines() if entry.startswith("RESULT ")]
    if proc.returncode or not line:
        print(proc.stdout[-2000:], proc.stderr[-4000:])
        raise SystemExit(f"{side} failed")
    return json.loads(line[0][len("RESULT ") :])


def alternate(rounds: int, sides: Sequence[str]) -> Iterator[tuple[int, str]]:
    """``(round, side)`` in run order: every side once per round, the order reversed every other round."""
    for r in range(rounds):
        for side in (sides if r % 2 == 0 else sides[::-1]):
            yield r, side


def run_rounds(script: str, argv: list[str], rounds: int, sides: Sequence[str], threads: int,
               show: Callable[[int, str, dict], None] | None = None) -> dict[str, list[dict]]:
    """Each side alone in its own child process, ``rounds`` times, alternating (``alternate``);
    ``show(round, side, result)`` prints a row as each run ends."""
    results: dict[str, list[dict]] = {side: [] for side in sides}
    for r, side in alternate(rounds, sides):
        results[side].append(run_side(script, side, argv, threads))
        if show is not None:
            show(r, side, results[side][-1])
    return results


def spread(values: Sequence[float]) -> tuple[float, float, float]:
    """(minimum, median, maximum)."""
    return min(values), statistics.median(values), max(values)


def format_spread(values: Sequence[float], digits: int = 2) -> str:
    """``median (min-max)`` of ``values``."""
    low, mid, high = spread(values)
    return f"{mid:.{digits}f} ({low:.{digits}f}-{high:.{digits}f})"


def print_summary(results: dict[str, list[dict]], key: str, unit: str, ratio: tuple[str, str] = ("tether", "trl"),
                  digits: int = 2, memory: bool = True, target: str = "") -> dict[str, float]:
    """Print each side's min/median/max of ``results[side][i][key]`` (and of its peak RSS) and the
    ratio of medians ``ratio[0] / ratio[1]``; return the medians by side."""
    medians = {}
    for side, runs in results.items():
        values = [run[key] for run in runs]
        medians[side] = statistics.median(values)
        low, mid, high = spread(values)
        line = f"{side:<7} {unit}: median {mid:.{digits}f}  min {low:.{digits}f}  max {high:.{digits}f}  ({len(values)} runs)"
        if memory and runs and "peak_rss_mb" in runs[0]:
            line += f"; peak RSS MB median {format_spread([run['peak_rss_mb'] for run in runs], 0)}"
        print(line)
    top, bottom = ratio
    if top in results and bottom in results:
        print(f"{unit} ratio {top}/{bottom} (medians): {medians[top] / medians[bottom]:.2f}x{' ' + target if target else ''}")
        if memory and "peak_rss_mb" in results[top][0]:
            rss = {s: statistics.median(run["peak_rss_mb"] for run in results[s]) for s in (top, bottom)}
            print(f"peak-memory ratio {top}/{bottom} (medians): {rss[top] / rss[bottom]:.2f}x")
    return medians
