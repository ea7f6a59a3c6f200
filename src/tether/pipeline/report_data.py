"""The data of ``report.html`` (``tether.evaluate.report``), read from the stages' output files only.

* curves: each run's ``metrics.jsonl`` (the online runs' proxy reward, gold reward and KL; DPO's
  loss and reward margin);
* frontier: each run's gold reward and KL on the held-out prompts (its ``eval.json``), and the
  starting policy at KL 0;
* win-rates: the gold judge's plain and length-controlled win-rates with their bootstrap intervals;
* reward model: accuracy and the reliability diagram on the held-out gold pairs;
* over-optimisation: per online run, proxy and gold reward against KL and against the training
  step (running means of ``eval.smooth`` steps), the monitors' warnings (``summary.json``) at the
  step where they fired and its KL;
* samples: the starting policy's and every run's reply to the first held-out prompts;
* stages: the wall time of each stage.
"""

from __future__ import annotations

import json
from pathlib import Path

from tether.pipeline.config import PipelineConfig
from tether.pipeline.stages import StageResult

CURVE_KEYS = {
    "reward/mean": "proxy reward (reward model)",
    "gold/mean": "gold reward",
    "kl/ref": "KL to reference",
    "loss": "DPO loss",
    "rewards/margin": "DPO implicit reward margin",
}


def _json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r for r in rows if r.get("split", "train") == "train"]


def running_mean(values: list[float], window: int) -> list[float]:
    """Mean of the last ``window`` values at each position (fewer at the start)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def _curves(rows: list[dict]) -> dict:
    curves: dict = {}
    for key, label in CURVE_KEYS.items():
        points = [[r["step"], r[key]] for r in rows if key in r]
        if points:
            curves[label] = points
    return curves


def _overoptimisation(rows: list[dict], summary: dict, window: int) -> dict | None:
    steps = [r for r in rows if "kl/ref" in r and "reward/mean" in r and "gold/mean" in r]
    if len(steps) < 2:
        return None
    kl = running_mean([r["kl/ref"] for r in steps], window)
    at_step = {r["step"]: k for r, k in zip(steps, kl)}
    warnings = []
    for w in summary.get("monitor_warnings") or []:
        step = min(at_step, key=lambda s: abs(s - w.get("step", 0)))
        warnings.append({"kl": at_step[step], "step": w.get("step", step), "kind": w.get("name", "?"), "message": f"step {w.get('step')}: {w.get('message', '')}"})
    return {"step": [r["step"] for r in steps], "kl": kl, "proxy": running_mean([r["reward/mean"] for r in steps], window), "gold": running_mean([r["gold/mean"] for r in steps], window), "warnings": warnings}


def report_data(cfg: PipelineConfig, results: dict[str, StageResult], runs: list[tuple[str, str, float]], extra_stages: list[dict] | None = None) -> dict:
    """Everything ``render_report`` draws, from the finished stages' files."""
    data: dict = {
        "title": "tether pipeline: aligning short movie reviews towards positive sentiment",
        "meta": {
            "model": cfg.model.name_or_path,
            "gold": f"{cfg.feedback.gold} (the simulated annotators' truth, the evaluation's reward and judge)",
            "held-out prompts": f"{cfg.data.eval_prompts} x {cfg.eval.samples_per_prompt} replies of at most {cfg.eval.max_new_tokens} tokens",
            "methods": ", ".join(name for name, _, _ in runs),
        },
        "curves": {},
        "frontier": [],
        "winrates": [],
        "overoptimisation": {},
        "samples": [],
    }
    label = results["label"].result
    data["meta"]["feedback"] = (
        f"{label['pairs']} pairs from {len(cfg.feedback.annotator_temperatures)} simulated annotators "
        f"(Bradley-Terry temperatures {cfg.feedback.annotator_temperatures}; {label['flipped']} against the gold order), gold gap >= {cfg.feedback.min_gap}"
    )
    start_added = False
    sample_rows: dict[str, list[dict]] = {}
    for name, method, kl in runs:
        run_dir = results[name].dir / "run"
        rows = _metrics(run_dir)
        curves = _curves(rows)
        if curves:
            for metric, points in curves.items():
                data["curves"].setdefault(name, {})[metric] = points
        if method != "dpo":
            over = _overoptimisation(rows, _json(run_dir / "summary.json"), cfg.eval.smooth)
            if over:
                data["overoptimisation"][name] = over
        ev = results.get(f"eval-{name}")
        if ev is None:
            continue
        result = _json(ev.dir / "eval.json")
        gold = result["rewards"]["gold"]
        if not start_added:
            data["frontier"].append({"method": "starting policy", "kl": 0.0, "gold": gold["reference"]["mean"], "gold_stderr": gold["reference"]["stderr"], "label": "before training"})
            start_added = True
        setting = f"beta={kl:g}" if method == "dpo" else f"kl.coef={kl:g}"
        data["frontier"].append({"method": method, "kl": result["kl"]["mean"], "gold": gold["policy"]["mean"], "gold_stderr": gold["policy"]["stderr"], "label": setting})
        w = result["win_rates"]["gold"]
        data["winrates"].append({"method": name, "judge": cfg.feedback.gold, "win_rate": w["win_rate"], "ci": w.get("win_rate_ci"), "lc_win_rate": w["lc_win_rate"], "lc_ci": w.get("lc_win_rate_ci"), "n": w["n"]})
        path = ev.dir / "samples.jsonl"
        sample_rows[name] = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()] if path.is_file() else []
    data["samples"] = _samples(sample_rows, cfg.eval.report_samples)
    rm = _json(results["rm"].dir / "heldout_eval.json")
    if rm:
        data["reward_model"] = {"accuracy": rm["accuracy"], "ece": rm["ece"], "length_baseline": rm["length_baseline_accuracy"], "n": int(rm["pairs"]), "bins": rm["bins"]}
    data["stages"] = [{"stage": r.name, "seconds": r.seconds, "reused": r.reused} for r in results.values()] + list(extra_stages or [])
    return data


def _samples(per_run: dict[str, list[dict]], count: int) -> list[dict]:
    """The first reply (sample 0) to each of the first ``count`` held-out prompts, before and after."""
    out: dict[int, dict] = {}
    for name, rows in per_run.items():
        for row in rows:
            if row.get("sample", 0) != 0 or row["prompt_index"] >= count:
                continue
            entry = out.setdefault(row["prompt_index"], {"prompt": row["prompt"], "before": row.get("reference", ""), "after": {}})
            entry["after"][name] = row["policy"]
    return [out[i] for i in sorted(out)]


__all__ = ["report_data", "running_mean"]
