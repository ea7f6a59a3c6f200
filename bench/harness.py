"""What the peer benchmarks share: each side runs in a child process of its own (so its peak
resident memory is its own), reports one ``RESULT {json}`` line, and leaves no files behind.

    result = run_side(__file__, "tether", ["--steps=3"], threads=2)   # parent
    report({"seconds": 1.0})                                           # child, last thing it does
"""

from __future__ import annotations

import atexit
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile


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
