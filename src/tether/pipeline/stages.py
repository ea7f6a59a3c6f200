"""Stages of a pipeline, each run once per distinct input, resumable after a kill.

A stage is a plain function ``fn(ctx) -> dict`` that writes its outputs into ``ctx.out`` (a
directory of its own) and returns a small JSON-able result (figures, paths relative to its
directory). Its key is a hash of its settings, of the keys of the stages it reads, and of a
version string; a finished stage leaves ``done.json`` holding that key. On the next run:

* a stage whose ``done.json`` holds the current key is skipped and its result read back;
* a stage whose key changed (its settings or anything upstream changed) runs again, and so does
  everything that reads it, because their keys contain its key;
* a stage killed halfway left no ``done.json``, so it runs again from scratch (its partial
  directory is moved aside first, so a rerun never sees half-written files as its own).

The runner adds no training logic: it orders, keys, times and records the calls.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Stage:
    name: str
    fn: Callable[[StageContext], dict]
    settings: dict[str, Any] = field(default_factory=dict)  # everything the stage's output depends on
    reads: tuple[str, ...] = ()  # names of earlier stages whose outputs it uses
    estimate_s: float = 60.0  # a rough duration, for the overall time-left estimate
    budget_s: float = 0.0  # the part of estimate_s a time budget fixes (train.max_minutes): it does not scale with machine speed
    version: str = "1"  # bump when the stage's code changes what it writes


@dataclass
class StageContext:
    out: Path  # this stage's output directory (empty when fn starts)
    settings: dict[str, Any]
    inputs: dict[str, StageResult]  # the results of the stages named in `reads`
    report: Callable[[str], None]  # prints a line under the pipeline's progress display


@dataclass
class StageResult:
    name: str
    key: str
    dir: Path
    result: dict
    seconds: float
    reused: bool


def stage_key(stage: Stage, upstream: dict[str, StageResult]) -> str:
    """sha256 over the stage's name, version, settings and its inputs' keys (sorted JSON, so the
    order in which settings were written does not matter)."""
    payload = {
        "name": stage.name,
        "version": stage.version,
        "settings": stage.settings,
        "reads": {name: upstream[name].key for name in stage.reads},
    }
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _read_done(path: Path) -> dict | None:
    try:
        return json.loads((path / "done.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def run_stages(stages: list[Stage], run_dir: str | Path, *, on_event: Callable[[str, dict], None] | None = None) -> dict[str, StageResult]:
    """Run ``stages`` in order under ``run_dir/stages/<name>``, skipping those already finished
    with the same key. ``on_event(kind, info)`` hears ``start``/``skip``/``finish`` with the
    stage's name, position and the estimated seconds left (for a progress display)."""
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise ValueError(f"stage names must be unique: {names}")
    root = Path(run_dir) / "stages"
    root.mkdir(parents=True, exist_ok=True)
    events = on_event or (lambda kind, info: None)
    results: dict[str, StageResult] = {}
    for position, stage in enumerate(stages):
        missing = [r for r in stage.reads if r not in results]
        if missing:
            raise ValueError(f"stage {stage.name!r} reads {missing}, which do not run before it")
        key = stage_key(stage, results)
        out = root / stage.name
        left_s = sum(s.estimate_s for s in stages[position:])
        info = {"stage": stage.name, "position": position, "total": len(stages), "estimate_left_s": left_s}
        done = _read_done(out)
        if done is not None and done.get("key") == key:
            results[stage.name] = StageResult(stage.name, key, out, done["result"], done["seconds"], reused=True)
            events("skip", info)
            continue
        if out.exists():  # a changed or unfinished stage: keep the old files aside, start empty
            stale = root / f".{stage.name}.stale"
            shutil.rmtree(stale, ignore_errors=True)
            out.rename(stale)
        out.mkdir(parents=True)
        events("start", info)
        started = time.time()
        ctx = StageContext(out=out, settings=stage.settings, inputs={r: results[r] for r in stage.reads}, report=lambda line: events("report", {**info, "line": line}))
        result = stage.fn(ctx)
        if not isinstance(result, dict):
            raise TypeError(f"stage {stage.name!r} returned {type(result).__name__}, expected a dict")
        seconds = time.time() - started
        record = {"key": key, "result": result, "seconds": round(seconds, 3), "settings": stage.settings}
        tmp = out / "done.json.tmp"
        tmp.write_text(json.dumps(record, indent=2, default=str))
        tmp.replace(out / "done.json")  # atomic: a kill before this line leaves the stage unfinished
        shutil.rmtree(root / f".{stage.name}.stale", ignore_errors=True)
        results[stage.name] = StageResult(stage.name, key, out, result, seconds, reused=False)
        events("finish", {**info, "seconds": seconds})
    return results


__all__ = ["Stage", "StageContext", "StageResult", "run_stages", "stage_key"]
