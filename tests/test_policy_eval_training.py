"""``policy_eval``: ``tether eval`` from inside the trainers every N steps (tether.evaluate.periodic),
on the tiny random model: the files and metrics appear at the right steps, settings that cannot
apply fail before training, and a resumed run neither repeats nor skips an evaluation."""

from __future__ import annotations

import json

import pytest
import torch

torch.set_num_threads(1)

from toy_rewards import LowercaseReward

EVAL = {"every": 2, "held_out": 2, "max_new_tokens": 4, "bootstrap": 20}


def _grpo_cfg(out, steps=5, save_every=0, policy_eval=None, data=None):
    from tether.config import from_dict
    from tether.trainers.grpo import GRPOConfig

    return from_dict(
        GRPOConfig,
        {
            "model": {"name_or_path": "tiny"},
            "lora": {"enabled": False},
            "sampling": {"max_new_tokens": 4},
            # two held-out prompts for policy_eval; eval_samples=0: no before/after reward pass, which would call the reward source
            "data": data if data is not None else {"eval_prompts": 2, "eval_samples": 0},
            "train": {"output_dir": str(out), "max_steps": steps, "progress": False, "save_every": save_every, "threads": 1, "prompts_per_step": 2, "samples_per_prompt": 2},
            "policy_eval": policy_eval if policy_eval is not None else {"every": 2, "max_new_tokens": 4, "bootstrap": 20},
        },
    )


def _policy_eval_lines(out) -> list[dict]:
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["split"] == "policy_eval"]


def _eval_files(out) -> list[str]:
    return sorted(p.name for p in (out / "eval").glob("step_*.json"))


def test_grpo_evaluates_every_n_steps_and_at_the_end(tmp_path):
    """max_steps 5, every 2: steps 2 and 4, and 5 (the last). Each file is a tether eval result
    (rewards, win-rates, KL, length, diversity) of the policy against the starting model; each
    evaluation is a policy_eval line of metrics.jsonl; summary.json carries the last one."""
    from tether.trainers.grpo import run_grpo

    out = tmp_path / "grpo"
    run_grpo(_grpo_cfg(out), reward_source=LowercaseReward())
    assert _eval_files(out) == ["step_2.json", "step_4.json", "step_5.json"]
    for step in (2, 4, 5):
        result = json.loads((out / "eval" / f"step_{step}.json").read_text())
        assert result["step"] == step and result["prompts"] == 2
        assert {"rewards", "win_rates", "kl", "length", "diversity", "settings"} <= result.keys()
        assert "vader" in result["rewards"] and "difference" in result["rewards"]["vader"]
        assert "trainer's frozen reference" in result["reference"]
        assert len((out / "eval" / f"step_{step}.samples.jsonl").read_text().splitlines()) == 2
    lines = _policy_eval_lines(out)
    assert [r["step"] for r in lines] == [2, 4, 5]
    assert {"reward/vader", "reward/vader/reference", "win_rate/vader", "lc_win_rate/vader", "kl", "length", "distinct_2"} <= lines[0].keys()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["policy_eval/win_rate/vader"] == lines[-1]["win_rate/vader"]


@pytest.mark.parametrize(
    ("trainer", "sections", "reference"),
    [
        ("ppo", {"train": {"samples_per_prompt": 1, "minibatch_size": 2}}, "trainer's frozen reference"),
        ("rloo", {"kl": {"coef": 0.0}}, "a frozen copy"),  # β fixed at 0: the trainer holds no reference, policy_eval takes its own copy
        ("nash", {"train": {"samples_per_prompt": 1}, "lora": {"enabled": True, "r": 4, "alpha": 8}}, "adapters off"),
        ("online_dpo", {}, "trainer's frozen reference"),
    ],
)
def test_every_online_trainer_evaluates_against_its_starting_model(tmp_path, trainer, sections, reference):
    """The online trainers share StepState, so each writes step_1 and step_2 at every=1; the
    reference is whichever starting model the run holds (or a copy when it holds none)."""
    import importlib

    from tether.config import from_dict

    module = importlib.import_module(f"tether.trainers.{trainer}")
    config_cls = {"ppo": "PPOConfig", "rloo": "RLOOConfig", "nash": "NashConfig", "online_dpo": "OnlineDPOConfig"}[trainer]
    run = getattr(module, f"run_{trainer}")
    out = tmp_path / trainer
    raw = {
        "model": {"name_or_path": "tiny"},
        "lora": {"enabled": False},
        "sampling": {"max_new_tokens": 4},
        "data": {"eval_prompts": 2, "eval_samples": 0},
        "train": {"output_dir": str(out), "max_steps": 2, "progress": False, "save_every": 0, "threads": 1, "prompts_per_step": 2, "samples_per_prompt": 2},
        "policy_eval": {"every": 1, "max_new_tokens": 4, "bootstrap": 0},
    }
    for key, values in sections.items():
        raw[key] = {**raw.get(key, {}), **values}
    run(from_dict(getattr(module, config_cls), raw), reward_source=LowercaseReward())
    assert _eval_files(out) == ["step_1.json", "step_2.json"]
    assert [r["step"] for r in _policy_eval_lines(out)] == [1, 2]
    assert reference in json.loads((out / "eval" / "step_2.json").read_text())["reference"]


def test_grpo_resume_neither_repeats_nor_skips(tmp_path):
    """every 2, checkpoint every 2, 4 steps; killed while scoring step 3 (after the step-2
    evaluation and checkpoint), resumed: the evaluations are steps 2 and 4, once each."""
    from dataclasses import replace

    from tether.trainers.grpo import run_grpo

    out = tmp_path / "cut"
    cfg = _grpo_cfg(out, steps=4, save_every=2)
    with pytest.raises(KeyboardInterrupt):
        run_grpo(cfg, reward_source=LowercaseReward(fail_on_call=3))
    assert [r["step"] for r in _policy_eval_lines(out)] == [2]
    run_grpo(replace(cfg, train=replace(cfg.train, resume=True)), reward_source=LowercaseReward())
    assert [r["step"] for r in _policy_eval_lines(out)] == [2, 4]
    assert _eval_files(out) == ["step_2.json", "step_4.json"]


@pytest.mark.parametrize(
    ("data", "policy_eval", "message"),
    [
        ({"eval_prompts": 0}, {"every": 2}, "data.eval_prompts=0"),
        ({"eval_prompts": 2}, {"every": 2, "judges": ["no_such_module_xyz:judge"]}, "policy_eval.judges[0]='no_such_module_xyz:judge' cannot be loaded"),
        ({"eval_prompts": 2}, {"every": 2, "reference": "none"}, "policy_eval.reference=none"),
        ({"eval_prompts": 2}, {"every": 2, "held_out": 4}, "policy_eval.held_out applies to policy_eval.prompts"),
    ],
)
def test_settings_that_cannot_apply_fail_before_training(tmp_path, data, policy_eval, message):
    from tether.trainers.grpo import run_grpo

    out = tmp_path / "bad"
    with pytest.raises(ValueError, match="policy_eval") as e:
        run_grpo(_grpo_cfg(out, policy_eval=policy_eval, data=data), reward_source=LowercaseReward())
    assert message in str(e.value)
    assert not (out / "metrics.jsonl").exists() and not (out / "checkpoints").exists()


# ---- offline: the DPO family and SFT share trainers.offline.fit ------------------------------------


@pytest.fixture
def pref_file(tmp_path):
    path = tmp_path / "pairs.jsonl"
    with open(path, "w") as f:
        f.writelines(json.dumps({"prompt": f"Spell {w}", "chosen": " ".join(w.upper()), "rejected": "no no no"}) + "\n" for w in ["apple", "river", "stone", "cloud", "maple", "ember"])
    return path


def _dpo_args(out, pref_file, steps, **extra):
    args = {
        "model.name_or_path": "tiny",
        "data.path": str(pref_file),
        "data.eval_fraction": "0",
        "train.output_dir": str(out),
        "train.max_steps": str(steps),
        "train.batch_size": "2",
        "train.micro_batch_size": "2",
        "train.lr": "3e-3",
        "train.progress": "false",
        "train.threads": "1",
        "train.sample_prompts": "[]",
        "train.save_every": "0",
        "dpo.reference": "copy",
        "policy_eval.prompts": "bundled:review_prompts",
        **{f"policy_eval.{k}": str(v) for k, v in EVAL.items()},
        **extra,
    }
    return [f"{k}={v}" for k, v in args.items()]


def test_dpo_evaluates_every_n_steps_against_its_frozen_reference(tmp_path, pref_file):
    from tether.config import DPOConfig, load_config
    from tether.trainers.dpo import run_dpo

    out = tmp_path / "dpo"
    run_dpo(load_config(DPOConfig, None, _dpo_args(out, pref_file, steps=5)))
    assert _eval_files(out) == ["step_2.json", "step_4.json", "step_5.json"]
    assert [r["step"] for r in _policy_eval_lines(out)] == [2, 4, 5]
    result = json.loads((out / "eval" / "step_5.json").read_text())
    assert "trainer's frozen reference" in result["reference"] and result["prompts"] == 2
    assert "policy_eval/kl" in json.loads((out / "summary.json").read_text())


def test_dpo_resume_neither_repeats_nor_skips(tmp_path, pref_file, monkeypatch):
    """4 steps, every 2, checkpoint at step 3; the evaluation at step 4 is interrupted; the resumed
    run (from step 3) evaluates step 4 only: steps 2 and 4 once each."""
    import tether.evaluate.policy as policy_module
    from tether.config import DPOConfig, load_config
    from tether.trainers.dpo import run_dpo

    real, calls = policy_module.evaluate_policy, []

    def interrupted_at_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated interruption")
        return real(*args, **kwargs)

    out = tmp_path / "dpo"
    args = _dpo_args(out, pref_file, steps=4, **{"train.save_every": "3"})
    monkeypatch.setattr(policy_module, "evaluate_policy", interrupted_at_second)
    with pytest.raises(KeyboardInterrupt):
        run_dpo(load_config(DPOConfig, None, args))
    monkeypatch.setattr(policy_module, "evaluate_policy", real)
    run_dpo(load_config(DPOConfig, None, [*args, "train.resume=true"]))
    assert [r["step"] for r in _policy_eval_lines(out)] == [2, 4]
    assert _eval_files(out) == ["step_2.json", "step_4.json"]


def test_offline_needs_prompts_and_checks_before_training(tmp_path, pref_file):
    from tether.config import DPOConfig, load_config
    from tether.trainers.dpo import run_dpo

    out = tmp_path / "dpo"
    args = [a for a in _dpo_args(out, pref_file, steps=2) if not a.startswith("policy_eval.prompts=") and not a.startswith("policy_eval.held_out=")]
    with pytest.raises(ValueError, match="policy_eval.every=2 needs policy_eval.prompts"):
        run_dpo(load_config(DPOConfig, None, args))
    assert not (out / "metrics.jsonl").exists()


def test_sft_with_lora_at_lr_zero_is_its_own_reference(tmp_path, demo_file):
    """LoRA: the reference is the policy with its adapters off (no copy). At lr 0 the adapters stay
    the no-op they start as, so the policy *is* the reference: each response's sequence KL,
    Σ_t log π − log π_ref over its own tokens, is 0 up to float rounding (the engine's incremental
    decoding against one full forward pass)."""
    from tether.config import SFTConfig, load_config
    from tether.trainers.sft import run_sft

    out = tmp_path / "sft"
    args = {
        "model.name_or_path": "tiny", "lora.enabled": "true", "lora.r": "4", "data.path": str(demo_file), "data.eval_fraction": "0",
        "train.output_dir": str(out), "train.max_steps": "2", "train.batch_size": "2", "train.micro_batch_size": "2", "train.lr": "0",
        "train.progress": "false", "train.threads": "1", "train.sample_prompts": "[]", "train.save_every": "0",
        "policy_eval.prompts": "bundled:review_prompts", "policy_eval.every": "1", "policy_eval.held_out": "3", "policy_eval.samples_per_prompt": "2",
        "policy_eval.max_new_tokens": "5", "policy_eval.bootstrap": "0", "policy_eval.judges": "[]",
    }
    run_sft(load_config(SFTConfig, None, [f"{k}={v}" for k, v in args.items()]))
    assert _eval_files(out) == ["step_1.json", "step_2.json"]
    result = json.loads((out / "eval" / "step_2.json").read_text())
    assert "adapters off" in result["reference"]
    rows = [json.loads(line) for line in (out / "eval" / "step_2.samples.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all(abs(r["kl"]) < 1e-4 for r in rows)


# ---- train.max_minutes in the offline loop ------------------------------------------------------


def test_offline_time_budget_stops_after_the_crossing_step(tmp_path, pref_file, monkeypatch):
    """A fake clock reads 0 when the loop starts and advances 1 minute per reading after that: with
    train.max_minutes=2.5 the readings after steps 1, 2, 3 are 1, 2, 3 minutes, so step 3 is the
    first to cross and the last of the 10 planned. It is then evaluated (the held-out loss and
    policy_eval), checkpointed and saved as a last step is, and summary.json says why it ended."""
    from tether.config import DPOConfig, load_config
    from tether.trainers import offline
    from tether.trainers.dpo import run_dpo

    readings = iter(range(1000))
    monkeypatch.setattr(offline, "clock", lambda: 60.0 * next(readings))
    out = tmp_path / "budget"
    args = _dpo_args(out, pref_file, steps=10, **{"train.max_minutes": "2.5", "policy_eval.every": "2"})
    result = run_dpo(load_config(DPOConfig, None, args))
    assert result.steps == 3
    train = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["split"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3]
    assert [r["step"] for r in _policy_eval_lines(out)] == [2, 3]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-0000003"]
    assert (out / "model" / "model.safetensors").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["stopped_by_max_minutes"] is True and summary["planned_steps"] == 10


def test_offline_time_budget_not_reached_runs_every_step(tmp_path, pref_file, monkeypatch):
    from tether.config import DPOConfig, load_config
    from tether.trainers import offline
    from tether.trainers.dpo import run_dpo

    monkeypatch.setattr(offline, "clock", lambda: 0.0)
    out = tmp_path / "plenty"
    result = run_dpo(load_config(DPOConfig, None, _dpo_args(out, pref_file, steps=3, **{"train.max_minutes": "1", "policy_eval.every": "0"})))
    summary = json.loads((out / "summary.json").read_text())
    assert result.steps == 3 and summary["stopped_by_max_minutes"] is False


def test_pipeline_passes_dpo_max_minutes_through(tmp_path, monkeypatch):
    """The pipeline's DPO stage hands dpo.max_minutes to the trainer as train.max_minutes (it used
    to refuse it with a note)."""
    from dataclasses import replace
    from types import SimpleNamespace

    from tether.pipeline import experiment
    from tether.pipeline.config import PipelineConfig
    from tether.trainers import dpo

    seen = {}
    monkeypatch.setattr(dpo, "run_dpo", lambda cfg: seen.setdefault("cfg", cfg))
    monkeypatch.setattr(experiment, "_threads", lambda cfg: None)
    cfg = PipelineConfig()
    cfg = replace(cfg, dpo=replace(cfg.dpo, max_minutes=1.5))
    notes = []
    ctx = SimpleNamespace(out=tmp_path, inputs={"label": SimpleNamespace(dir=tmp_path)}, report=notes.append)
    experiment.dpo_stage(cfg, 0.1, ctx)
    assert seen["cfg"].train.max_minutes == 1.5
    assert not any("max_minutes" in n for n in notes)
