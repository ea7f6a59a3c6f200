"""`tether pipeline` end to end on the tiny random model: every report section, resume after a
SIGKILL, and a changed reward-model setting rerunning only what depends on it.

The tiny model writes random tokens, which VADER scores 0 (no pairs to learn from), so these runs
use the fraction of lowercase letters (tests/toy_rewards.py) as the gold function instead.
"""

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tether.pipeline.command import StageDisplay, load_pipeline_config, run_pipeline
from tether.pipeline.report_data import running_mean

SRC = Path(__file__).resolve().parents[1] / "src"
TESTS = Path(__file__).resolve().parent


def _prompts(path: Path) -> Path:
    films = ["a lighthouse drama", "a space opera", "a bakery comedy", "a farmhouse horror", "a robot cartoon", "a heist thriller", "a war epic", "a chess biopic", "a surf documentary", "a jazz musical"]
    path.write_text("".join(json.dumps({"prompt": f"Write a short review of {f}."}) + "\n" for f in films))
    return path


def _overrides(prompts: Path, **extra) -> list[str]:
    base = {
        "model.name_or_path": "tiny", "data.prompts": str(prompts), "data.eval_prompts": "3", "sample.max_new_tokens": "8", "sample.k": "3",
        "feedback.gold": "toy_rewards:LowercaseReward", "feedback.min_gap": "0.02", "feedback.rm_eval_fraction": "0.3",
        "rm.steps": "3", "ppo.steps": "3", "grpo.steps": "3", "dpo.steps": "2", "eval.max_new_tokens": "8", "eval.bootstrap_rounds": "50",
        "eval.smooth": "2", "run.threads": "1", "rm.layers": "1",
    }
    return [f"{k}={v}" for k, v in (base | extra).items()]


class Recorder:
    def __init__(self):
        self.events = []

    def __call__(self, kind, info):
        self.events.append((kind, info["stage"]))

    def stages(self, kind):
        return [s for k, s in self.events if k == kind]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    cfg = load_pipeline_config(None, _overrides(_prompts(root / "prompts.jsonl")), output=str(root / "run"))
    recorder = Recorder()
    outcome = run_pipeline(cfg, on_event=recorder)
    return root, outcome, recorder


def test_the_tiny_pipeline_runs_every_stage_and_fills_every_report_section(tiny_run):
    root, outcome, recorder = tiny_run
    assert recorder.stages("start") == ["prompts", "sample", "label", "rm", "ppo", "grpo", "dpo", "eval-ppo", "eval-grpo", "eval-dpo"]
    page = outcome["report"].read_text()
    for anchor in ("winrates", "frontier", "overoptimisation", "curves", "reward-model", "samples", "stages"):
        assert f'id="{anchor}"' in page, anchor
    data = outcome["data"]
    assert {w["method"] for w in data["winrates"]} == {"ppo", "grpo", "dpo"}
    assert all(0 <= w["ci"][0] <= w["win_rate"] <= w["ci"][1] <= 1 for w in data["winrates"])
    assert [p["method"] for p in data["frontier"]] == ["starting policy", "ppo", "grpo", "dpo"] and data["frontier"][0]["kl"] == 0.0
    assert set(data["overoptimisation"]) == {"ppo", "grpo"}  # the runs trained on the learned reward model
    assert len(data["overoptimisation"]["ppo"]["kl"]) == 3 and data["overoptimisation"]["ppo"]["step"] == [1, 2, 3]
    assert 0 <= data["reward_model"]["accuracy"] <= 1 and data["reward_model"]["bins"]
    assert len(data["samples"]) == 3 and set(data["samples"][0]["after"]) == {"ppo", "grpo", "dpo"}
    # the held-out prompts never reached sampling: the evaluation's prompts are not among the candidates'
    held = {json.loads(x)["prompt"] for x in (root / "run/stages/prompts/heldout.jsonl").read_text().splitlines()}
    sampled = {json.loads(x)["prompt"] for x in (root / "run/stages/sample/samples.jsonl").read_text().splitlines()}
    assert len(held) == 3 and len(sampled) == 7 and not held & sampled


def test_the_tiny_report_renders_in_headless_chromium(tiny_run):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed; the browser check needs it")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    root, outcome, _ = tiny_run
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        requests = []
        page.on("request", lambda r: requests.append(r.url))
        page.goto(outcome["report"].as_uri())
        # frontier, reliability, two over-optimisation runs (PPO, GRPO) x two panels (against KL and
        # against the step), one curve panel per logged metric
        metrics = {m for per_run in outcome["data"]["curves"].values() for m in per_run}
        assert page.locator("svg").count() == 2 + 2 * 2 + len(metrics)
        assert page.locator("#winrates + table tr").count() == 4
        shot = page.screenshot(full_page=True)
        browser.close()
    assert [u for u in requests if not u.startswith("file://")] == []
    (root / "report.png").write_bytes(shot)
    assert len(shot) > 50_000, len(shot)  # not blank: plots and tables compress far worse than an empty page


def test_a_killed_stage_reruns_alone_and_a_changed_rm_setting_reruns_only_what_follows(tmp_path):
    prompts = _prompts(tmp_path / "prompts.jsonl")
    out = tmp_path / "run"
    overrides = _overrides(prompts, **{"rm.steps": "40"})
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{TESTS}", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "tether", "pipeline", "--output", str(out), *overrides], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rm_dir = out / "stages" / "rm"
    deadline = time.time() + 120
    while not (rm_dir / "run").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert (out / "stages/label/done.json").exists() and not (rm_dir / "done.json").exists()

    resumed = Recorder()
    run_pipeline(load_pipeline_config(None, overrides, output=str(out)), on_event=resumed)
    assert resumed.stages("skip") == ["prompts", "sample", "label"]
    assert resumed.stages("start") == ["rm", "ppo", "grpo", "dpo", "eval-ppo", "eval-grpo", "eval-dpo"]

    changed = Recorder()
    run_pipeline(load_pipeline_config(None, overrides + ["rm.lr=5e-4"], output=str(out)), on_event=changed)
    # DPO learns from the pairs, not from the reward model: it and everything before the RM are kept;
    # its evaluation reruns, as it reports the (new) reward model's proxy reward too
    assert changed.stages("skip") == ["prompts", "sample", "label", "dpo"]
    assert changed.stages("start") == ["rm", "ppo", "grpo", "eval-ppo", "eval-grpo", "eval-dpo"]


def test_time_left_scales_the_remaining_estimates_by_measured_over_estimated():
    """Estimates 10, 20, 30 s, prior 60 s. Before any stage: 60 s left. Stage 0 took 80 s against 10
    estimated: factor (80 + 60) / (10 + 60) = 2, so the 20 + 30 s left become 100 s. A stage of 0 s
    against 1 s estimated barely moves it: (0 + 60) / (1 + 60)."""
    display = StageDisplay([10.0, 20.0, 30.0], stream=io.StringIO())
    assert display.PRIOR_S == 60.0 and display.left(0) == 60.0
    display("finish", {"stage": "a", "position": 0, "total": 3, "seconds": 80.0})
    assert display.factor() == pytest.approx(2.0) and display.left(1) == pytest.approx(100.0)
    quick = StageDisplay([1.0, 100.0], stream=io.StringIO())
    quick("finish", {"stage": "a", "position": 0, "total": 2, "seconds": 0.0})
    assert quick.left(1) == pytest.approx(100.0 * 60.0 / 61.0)


def test_time_budgets_are_not_scaled_by_the_measured_speed():
    """Estimates 10, 100 and 30 s, of which 90 s of the second are a trainer's time budget. Stage 0
    took 80 s against 10: factor 2, so 2 * (100 - 90) + 90 + 2 * 30 = 170 s are left, not 260. The
    budgeted stage then took 95 s: its 5 s beyond the budget count against its 10 s estimated,
    factor (80 + 5 + 60) / (10 + 10 + 60) = 1.8125."""
    display = StageDisplay([10.0, 100.0, 30.0], stream=io.StringIO(), budgets=[0.0, 90.0, 0.0])
    display("finish", {"stage": "a", "position": 0, "total": 3, "seconds": 80.0})
    assert display.left(1) == pytest.approx(170.0)
    display("finish", {"stage": "b", "position": 1, "total": 3, "seconds": 95.0})
    assert display.factor() == pytest.approx(1.8125) and display.left(2) == pytest.approx(1.8125 * 30.0)


def test_a_stage_whose_work_outlasts_its_budget_has_the_budget_fixed():
    from tether.pipeline.experiment import stage_times

    cfg = load_pipeline_config(
        None, ["ppo.steps=30", "ppo.max_minutes=3", "dpo.steps=4", "dpo.max_minutes=3", "grpo.max_minutes=null", "sample.max_minutes=1", "rm.max_minutes=null"]
    )
    fixed = {name: budget for name, (_, budget) in stage_times(cfg).items()}
    # PPO 30 x 25 s > 180 s; DPO 4 x 9 s < 180 s; GRPO and the reward model unbounded;
    # sampling 208 prompts x 4 x 32 tokens x 0.007 s = 186 s > 60 s
    assert fixed == {"prompts": 0.0, "sample": 60.0, "label": 0.0, "rm": 0.0, "ppo": 180.0, "grpo": 0.0, "dpo": 0.0, "eval": 0.0}


def test_running_mean_averages_the_last_window_values():
    """window 2 over [1, 3, 5, 7]: [1, (1+3)/2, (3+5)/2, (5+7)/2] = [1, 2, 4, 6]."""
    assert running_mean([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]


def test_sweep_adds_runs_at_each_kl_strength_and_keeps_the_default_runs_name():
    from tether.pipeline.experiment import build_stages

    cfg = load_pipeline_config(None, ["ppo.kl=0.05", "ppo.sweep=[0.01, 0.2]", "grpo.enabled=false", "dpo.enabled=false"], sweep=True)
    stages, runs = build_stages(cfg)
    assert runs == [("ppo-kl0.01", "ppo", 0.01), ("ppo", "ppo", 0.05), ("ppo-kl0.2", "ppo", 0.2)]
    assert [s.name for s in stages][-3:] == ["eval-ppo-kl0.01", "eval-ppo", "eval-ppo-kl0.2"]


@pytest.mark.parametrize("method,preset", [("grpo", "grpo_vader"), ("ppo", "ppo_vader"), ("dpo", None)])
def test_a_method_without_a_time_budget_replaces_the_trainer_presets_budget(method, preset):
    """`grpo.max_minutes: null` means the steps alone bound the run; the trainer's own preset (7
    minutes in grpo_vader.yaml) must not come back in its place, and a set budget goes through."""
    from tether.config import DPOConfig, load_config
    from tether.pipeline.experiment import budget_overrides
    from tether.trainers.grpo import GRPOConfig
    from tether.trainers.ppo import PPOConfig

    config_class = {"grpo": GRPOConfig, "ppo": PPOConfig, "dpo": DPOConfig}[method]
    for minutes, expected in (("null", None), ("1.5", 1.5)):
        cfg = load_pipeline_config(None, [f"{method}.max_minutes={minutes}"])
        trainer = load_config(config_class, preset, budget_overrides(getattr(cfg, method)))
        assert trainer.train.max_minutes == expected


def test_the_config_defaults_are_the_bundled_experiment():
    """A YAML of one's own that leaves a key out inherits pipeline_sentiment.yaml's value."""
    from dataclasses import asdict

    from tether.pipeline.config import PipelineConfig

    assert asdict(PipelineConfig()) == asdict(load_pipeline_config(None, []))


def test_a_sampling_budget_that_runs_out_is_reported(tmp_path):
    """sample.max_minutes=0: the first batch of 2 prompts runs, the other 3 go unsampled, and the
    stage says so in a warning and in its result."""
    from types import SimpleNamespace

    from tether.pipeline.experiment import sample_stage

    (tmp_path / "train.jsonl").write_text("".join(json.dumps({"prompt": f"Review film {i}."}) + "\n" for i in range(5)))
    cfg = load_pipeline_config(None, ["model.name_or_path=tiny", "sample.max_minutes=0", "sample.batch_size=2", "sample.k=2", "sample.max_new_tokens=4", "run.threads=1"])
    notes = []
    ctx = SimpleNamespace(out=tmp_path, inputs={"prompts": SimpleNamespace(dir=tmp_path)}, report=notes.append)
    result = sample_stage(cfg, ctx)
    assert result == {"prompts": 2, "unsampled_prompts": 3, "completions": 4}
    assert len((tmp_path / "samples.jsonl").read_text().splitlines()) == 2
    assert any(n.startswith("warning: sample.max_minutes=0") and "the other 3 get no candidates" in n for n in notes), notes
