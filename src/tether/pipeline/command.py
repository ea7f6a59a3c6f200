"""`tether pipeline`: the bundled experiment end to end, resumable, with an HTML report.

    tether pipeline                                  # the default model on CPU, into runs/pipeline
    tether pipeline --sweep                          # each method at several KL strengths (the frontier)
    tether pipeline rm.lr=5e-4 ppo.steps=60          # reruns the reward model and what follows it
    tether pipeline --config my.yaml --output runs/x model.name_or_path=tiny

Settings: src/tether/configs/pipeline_sentiment.yaml (the default), any ``section.key=value`` of
``tether.pipeline.config.PipelineConfig``. Running again resumes after the last finished stage.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

DEFAULT_CONFIG = "pipeline_sentiment"


def _clock(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class StageDisplay:
    """Which stage runs, its position, and the time left overall: the remaining stages' estimates
    scaled by how long the stages run so far took against their own estimates. The part of an
    estimate that a time budget fixes (a trainer's max_minutes) is not scaled: a faster machine
    does more steps in it, not fewer seconds. Rich on a terminal (the trainers draw their own
    progress bars under it), plain lines otherwise."""

    def __init__(self, estimates: list[float], stream=None, budgets: list[float] | None = None):
        self.estimates = estimates
        self.budgets = budgets or [0.0] * len(estimates)  # seconds of each estimate fixed by a time budget
        self.stream = stream or sys.stderr
        self.measured = 0.0
        self.expected = 0.0
        self.console = None
        if self.stream.isatty():
            from rich.console import Console

            self.console = Console(file=self.stream)

    PRIOR_S = 60.0  # seconds of "the estimates were right" mixed in, so a 0.1 s stage against 1 s estimated does not cut the rest tenfold

    def factor(self) -> float:
        """(measured + prior) / (estimated + prior) over the stages run so far, their budgets left
        out of both, kept within [0.2, 5]."""
        return min(5.0, max(0.2, (self.measured + self.PRIOR_S) / (self.expected + self.PRIOR_S)))

    def estimate(self, position: int) -> float:
        budget = self.budgets[position]
        return self.factor() * (self.estimates[position] - budget) + budget

    def left(self, position: int) -> float:
        return sum(self.estimate(p) for p in range(position, len(self.estimates)))

    def _line(self, text: str, style: str = "") -> None:
        if self.console is not None:
            self.console.print(text, style=style or None, highlight=False)
        else:
            print(text, file=self.stream, flush=True)

    def __call__(self, kind: str, info: dict) -> None:
        where = f"[{info['position'] + 1}/{info['total']}] {info['stage']}"
        if kind == "skip":
            self._line(f"{where}: finished in an earlier run, reused")
        elif kind == "start":
            self._line(f"{where}: running (estimate {_clock(self.estimate(info['position']))}; about {_clock(self.left(info['position']))} left overall)", "bold")
        elif kind == "finish":
            budget = self.budgets[info["position"]]
            self.measured += max(0.0, info["seconds"] - budget)
            self.expected += self.estimates[info["position"]] - budget
            self._line(f"{where}: done in {_clock(info['seconds'])}; about {_clock(self.left(info['position'] + 1))} left overall", "green")
        elif kind == "report":
            self._line(f"    {info['stage']}: {info['line']}")


def load_pipeline_config(path: str | None, overrides: list[str], output: str | None = None, sweep: bool = False):
    from tether.config import load_config
    from tether.pipeline.config import PipelineConfig

    extra = ([f"run.output_dir={output}"] if output else []) + (["run.sweep=true"] if sweep else [])
    return load_config(PipelineConfig, path or DEFAULT_CONFIG, list(overrides) + extra)


def run_pipeline(cfg, on_event=None) -> dict:
    """Run (or resume) every stage under ``cfg.run.output_dir`` and write ``report.html`` there."""
    from tether.config import save_yaml
    from tether.evaluate.report import render_report, write_report
    from tether.pipeline.experiment import build_stages
    from tether.pipeline.report_data import report_data
    from tether.pipeline.stages import run_stages

    stages, runs = build_stages(cfg)
    out = Path(cfg.run.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_yaml(cfg, out / "config.yaml")
    display = on_event or StageDisplay([s.estimate_s for s in stages], budgets=[s.budget_s for s in stages])
    started = time.time()
    results = run_stages(stages, out, on_event=display)
    report_started = time.time()
    data = report_data(cfg, results, runs)
    render_report(data)  # rendered once to time it (a second or two of plotting), then with its own time
    data["stages"].append({"stage": "report", "seconds": time.time() - report_started, "reused": False})
    data["meta"]["wall time"] = f"{time.time() - started:.0f} s this run; stages' own times below"
    write_report(data, out / "report.html")
    print(f"wrote {out / 'report.html'}", file=sys.stderr)
    return {"results": results, "report": out / "report.html", "data": data}


def _summary_lines(data: dict) -> list[str]:
    lines = [f"{'stage':<20} seconds"] + [f"{s['stage']:<20} {s['seconds']:7.1f}{' (reused)' if s.get('reused') else ''}" for s in data["stages"]]
    for w in data["winrates"]:
        ci = w.get("ci") or [float("nan")] * 2
        lci = w.get("lc_ci") or [float("nan")] * 2
        lines.append(f"{w['method']}: win-rate {w['win_rate']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}], length-controlled {w['lc_win_rate']:.3f} [{lci[0]:.3f}, {lci[1]:.3f}]")
    for p in data["frontier"]:
        lines.append(f"frontier {p['method']} ({p.get('label', '')}): KL {p['kl']:.3f}, gold {p['gold']:.3f} ± {p.get('gold_stderr') or 0:.3f}")
    return lines


def _pipeline_command(args: argparse.Namespace) -> int:
    if args.restart:
        cfg = load_pipeline_config(args.config, args.overrides, args.output, args.sweep)
        shutil.rmtree(Path(cfg.run.output_dir) / "stages", ignore_errors=True)
    cfg = load_pipeline_config(args.config, args.overrides, args.output, args.sweep)
    try:
        outcome = run_pipeline(cfg)
    except ValueError as e:
        print(f"tether pipeline: {e}", file=sys.stderr)
        return 1
    print("\n".join(_summary_lines(outcome["data"])))
    return 0


def add_pipeline_command(sub) -> None:
    """Register ``tether pipeline`` (called by tether.cli)."""
    from tether.cli import _key_table
    from tether.pipeline.config import PipelineConfig

    p = sub.add_parser(
        "pipeline",
        help="The whole loop on the bundled sentiment task: sample, simulated feedback, reward model, PPO/GRPO/DPO, evaluation, HTML report.",
        description=__doc__,
        epilog=_key_table(PipelineConfig),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", default=None, help=f"pipeline YAML (default: the packaged {DEFAULT_CONFIG}.yaml)")
    p.add_argument("--output", default=None, help="run directory (run.output_dir; default runs/pipeline)")
    p.add_argument("--sweep", action="store_true", help="train each method at every KL strength of its sweep list (run.sweep=true)")
    p.add_argument("--restart", action="store_true", help="discard the finished stages of this run directory and start over")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="settings of tether.pipeline.config.PipelineConfig, e.g. rm.lr=5e-4")
    p.set_defaults(_handler=_pipeline_command)


__all__ = ["StageDisplay", "add_pipeline_command", "load_pipeline_config", "run_pipeline"]
