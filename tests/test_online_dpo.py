"""Online DPO on the tiny model: labels from a judge, the gold reward rises, the CLI route."""

import json

import pytest
import torch

from tether.config import from_dict

torch.set_num_threads(1)

from toy_rewards import LowercaseReward  # noqa: E402


def _cfg(tmp_path, name, steps, **sections):
    from tether.trainers.online_dpo import OnlineDPOConfig

    raw = {
        "model": {"name_or_path": "tiny"},
        "lora": {"enabled": False},
        "sampling": {"max_new_tokens": 6},
        "data": {"eval_prompts": 0},
        "train": {"output_dir": str(tmp_path / name), "max_steps": steps, "prompts_per_step": 8, "lr": 3e-3, "progress": False, "save_every": 0, "threads": 1},
    }
    for k, v in sections.items():
        raw[k] = {**raw.get(k, {}), **v}
    return from_dict(OnlineDPOConfig, raw)


def test_label_pairs_hand_values():
    """P = [0.9, 0.5, 0.2]: pair 0 keeps reply 0 over 1, pair 1 ties (dropped), pair 2 keeps reply 5 over 4."""
    from tether.trainers.online_dpo import label_pairs

    chosen, rejected, kept = label_pairs(torch.tensor([0.9, 0.5, 0.2]))
    assert chosen.tolist() == [0, 5] and rejected.tolist() == [1, 4] and kept.tolist() == [0, 2]


def test_online_dpo_with_a_gold_labeller_raises_the_gold_reward(tmp_path):
    """The lowercase-fraction reward labels each sampled pair (hard verdicts); 25 DPO steps on the
    policy's own samples raise the mean reward of the last 5 steps over the first 5 by > 0.1
    (a random tiny model starts near 26/259 ≈ 0.1)."""
    from tether.trainers.online_dpo import run_online_dpo

    cfg = _cfg(tmp_path, "gain", 25, dpo={"beta": 0.1})
    run_online_dpo(cfg, reward_source=LowercaseReward())
    logged = [json.loads(line) for line in open(tmp_path / "gain" / "metrics.jsonl")]
    rewards = [r["reward/mean"] for r in logged]
    assert sum(rewards[-5:]) / 5 - sum(rewards[:5]) / 5 > 0.1, rewards
    assert all("label/ties" in r and "kl/ref" in r for r in logged)
    assert any("rewards/accuracy" in r for r in logged)


def test_online_dpo_rejects_settings_that_do_not_apply(tmp_path):
    from tether.trainers.online_dpo import run_online_dpo

    for section, match in ((({"dpo": {"loss": "kto"}}), "paired loss"), ({"train": {"samples_per_prompt": 3}}, "samples_per_prompt"), ({"kl": {"coef": 0.1}}, "dpo.beta"), ({"dpo": {"reference": "cached"}}, "cached")):
        with pytest.raises(ValueError, match=match):
            run_online_dpo(_cfg(tmp_path, "bad", 1, **section), reward_source=LowercaseReward())


def test_cli_dpo_online_route(tmp_path):
    """`tether dpo --online` runs online DPO (here with a saved preference model as the labeller and IPO)."""
    from tether.cli import main
    from tether.models.preference import PreferenceModel
    from tether.models.tiny import tiny_model_and_tokenizer

    model, tok = tiny_model_and_tokenizer()
    PreferenceModel(model, tok, max_length=128).save_pretrained(tmp_path / "pm")
    out = tmp_path / "cli"
    code = main(["dpo", "--online", "--model", "tiny", "--loss", "ipo", "--labeller", str(tmp_path / "pm"), "--output", str(out), "--max-steps", "2",
                 "lora.enabled=false", "sampling.max_new_tokens=5", "data.eval_prompts=2", "data.eval_samples=1", "train.prompts_per_step=2",
                 "train.progress=false", "train.threads=1"])
    assert code == 0
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    assert "held_out/win_rate_vs_reference" in json.loads((out / "summary.json").read_text())
