"""Uncertainty-aware DPO: the ensemble confidence rule (hand values), the weighted reduction, the
ensemble judge on a saved tiny ensemble, and the rule applied in online DPO and `tether iterate`."""

import json
import math
import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

TESTS = Path(__file__).parent


def _sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


GAPS = torch.tensor([[2.0, 1.0, 3.0, -4.0], [2.0, -1.0, 1.0, -4.0], [2.0, 0.0, -1.0, -2.0]])  # [K=3, N=4]


def test_weight_rule_hand_values():
    """P̄ = mean_k σ(d_k), w = |2P̄ − 1|:
    pair 0, d = (2, 2, 2): P̄ = σ(2), w = 2σ(2) − 1 = tanh(1);
    pair 1, d = (1, −1, 0): σ(1) + σ(−1) = 1, so P̄ = (1 + ½)/3 = ½: a tie, w = 0;
    pair 2, d = (3, 1, −1): P̄ = (σ(3) + 1)/3, w = (2σ(3) − 1)/3 = tanh(1.5)/3;
    pair 3, d = (−4, −4, −2): P̄ = (2σ(−4) + σ(−2))/3 < ½ (the second reply wins), w = 1 − 2P̄."""
    from tether.feedback.uncertainty import confidence_rule

    p, w = confidence_rule(GAPS, "weight")
    p3 = (2 * _sig(-4) + _sig(-2)) / 3
    assert p.tolist() == pytest.approx([_sig(2), 0.5, (_sig(3) + 1) / 3, p3], abs=1e-6)
    assert w.tolist() == pytest.approx([math.tanh(1), 0.0, math.tanh(1.5) / 3, 1 - 2 * p3], abs=1e-6)
    # temperature 2 halves every gap: pair 0's weight becomes tanh(0.5)
    assert confidence_rule(GAPS, "weight", temperature=2.0)[1][0].item() == pytest.approx(math.tanh(0.5), abs=1e-6)


def test_drop_rule_hand_values():
    """Keep when |mean d| > k·std d (sample std over members):
    pair 0: mean 2, std 0: kept for any k; pair 1: P̄ = ½, a tie: dropped;
    pair 2: mean 1, std sqrt((4 + 0 + 4)/2) = 2: dropped at k = 1 (1 ≤ 2), kept at k = 0.4 (1 > 0.8);
    pair 3: mean −10/3, std sqrt((4/9 + 4/9 + 16/9)/2) = sqrt(4/3) ≈ 1.155: kept at k = 1, dropped at k = 3 (3.33 ≤ 3.46)."""
    from tether.feedback.uncertainty import confidence_rule

    assert confidence_rule(GAPS, "drop", k=1.0)[1].tolist() == [1.0, 0.0, 0.0, 1.0]
    assert confidence_rule(GAPS, "drop", k=0.4)[1].tolist() == [1.0, 0.0, 1.0, 1.0]
    assert confidence_rule(GAPS, "drop", k=3.0)[1].tolist() == [1.0, 0.0, 0.0, 0.0]
    assert confidence_rule(GAPS, "off")[1].tolist() == [1.0, 0.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="rule"):
        confidence_rule(GAPS, "vote")


def test_weight_metrics_and_example_mean():
    """weights (1, 0, 0.5): a third dropped, mean kept weight 0.75. example_mean of (1, 2, 3) with
    them: (1 + 0 + 1.5)/3; its gradient is w/N; no weights is the plain mean; negative weights refuse."""
    from tether.feedback.uncertainty import weight_metrics
    from tether.losses.reduce import example_mean

    w = torch.tensor([1.0, 0.0, 0.5])
    assert weight_metrics(w) == pytest.approx({"label/dropped": 1 / 3, "label/weight_mean": 0.75})
    v = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    out = example_mean(v, w)
    assert out.item() == pytest.approx(2.5 / 3)
    out.backward()
    assert v.grad.tolist() == pytest.approx([1 / 3, 0.0, 0.5 / 3])
    assert example_mean(v.detach()).item() == 2.0
    with pytest.raises(ValueError, match=">= 0"):
        example_mean(v.detach(), torch.tensor([1.0, -1.0, 0.0]))


def save_tiny_ensemble(path, size: int = 3):
    """A 3-member tiny ensemble with distinct random heads, so the members disagree."""
    from tether.models import tiny_model_and_tokenizer
    from tether.models.reward_ensemble import RewardEnsemble

    torch.manual_seed(0)
    model, tokenizer = tiny_model_and_tokenizer(seed=3)
    ensemble = RewardEnsemble.create(model, tokenizer, size=size)
    with torch.no_grad():
        for k, m in enumerate(ensemble.members):
            m.head.weight.normal_(generator=torch.Generator().manual_seed(k))
    ensemble.save_pretrained(path)
    return ensemble


def test_ensemble_judge_uses_each_members_reward_gap(tmp_path):
    """EnsembleJudge's member gaps are each member's own score of the first reply minus the
    second (RewardEnsemble.score_all, combined), and its label is confidence_rule of them."""
    from tether.feedback.uncertainty import EnsembleJudge, confidence_rule
    from tether.models.reward_ensemble import RewardEnsemble

    save_tiny_ensemble(tmp_path / "ens")
    ens = RewardEnsemble.from_pretrained(tmp_path / "ens")
    prompts, a, b = ["hi", "tell me"], ["good day", "a story"], ["bad", "no"]
    judge = EnsembleJudge(str(tmp_path / "ens"), "weight")
    gaps = judge.member_gaps(prompts, a, b)
    direct = torch.stack([m.score(prompts, a) - m.score(prompts, b) for m in ens.members])  # [3, 2]
    torch.testing.assert_close(gaps, direct, atol=1e-5, rtol=0)
    assert gaps.std(0).min() > 0  # the members disagree
    p, w = judge.label(prompts, a, b)
    p2, w2 = confidence_rule(direct, "weight")
    torch.testing.assert_close(p, p2, atol=1e-5, rtol=0)
    torch.testing.assert_close(w, w2, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="ensemble"):
        EnsembleJudge(str(tmp_path), "weight")


def _online_cfg(tmp_path, name, **online):
    from tether.config import from_dict
    from tether.trainers.online_dpo import OnlineDPOConfig

    raw = {
        "model": {"name_or_path": "tiny"},
        "lora": {"enabled": False},
        "sampling": {"max_new_tokens": 6},
        "data": {"eval_prompts": 0},
        "reward": {"source": str(tmp_path / "ens")},
        "train": {"output_dir": str(tmp_path / name), "max_steps": 2, "prompts_per_step": 8, "lr": 3e-3, "progress": False, "save_every": 0, "threads": 1},
        "online": online,
    }
    return from_dict(OnlineDPOConfig, raw)


def test_online_dpo_weights_and_drops_by_the_ensemble(tmp_path):
    """online.uncertainty=weight logs label/weight_mean in (0, 1] and trains; drop with a huge k
    drops every pair, so no step is taken and the saved policy is the starting one, weight for weight."""
    from safetensors.torch import load_file

    from tether.models import tiny_model_and_tokenizer
    from tether.trainers.online_dpo import run_online_dpo

    save_tiny_ensemble(tmp_path / "ens")
    run_online_dpo(_online_cfg(tmp_path, "w", uncertainty="weight"))
    logged = [json.loads(line) for line in open(tmp_path / "w" / "metrics.jsonl")]
    assert all(0 < r["label/weight_mean"] <= 1 and 0 <= r["label/dropped"] <= 1 for r in logged)
    assert any("loss/total" in r for r in logged)
    run_online_dpo(_online_cfg(tmp_path, "d", uncertainty="drop", uncertainty_k=1e9))
    logged = [json.loads(line) for line in open(tmp_path / "d" / "metrics.jsonl")]
    assert all(r["label/dropped"] == 1.0 and "loss/total" not in r for r in logged)
    start = tiny_model_and_tokenizer(seed=0)[0].state_dict()
    saved = load_file(str(tmp_path / "d" / "model" / "model.safetensors"))
    for k, v in saved.items():
        if k in start:
            assert torch.equal(v, start[k]), k


def test_iterate_drops_pairs_by_the_ensemble(tmp_path, monkeypatch):
    """iterate.uncertainty=drop with the ensemble directory as labeller: the round's label.json
    counts the dropped fraction, and pairs.jsonl holds exactly the pairs the rule kept."""
    monkeypatch.setenv("TETHER_CACHE", str(tmp_path / "cache"))
    sys.path.insert(0, str(TESTS))
    from iterate_driver import config

    from tether.feedback.sample import read_sample_rows, sample_pairs
    from tether.feedback.uncertainty import EnsembleJudge
    from tether.trainers.iterate import run_iterate

    save_tiny_ensemble(tmp_path / "ens")
    cfg = config(str(tmp_path / "run"), labeller=str(tmp_path / "ens"), uncertainty="drop", uncertainty_k=0.5, rounds=1, samples_per_prompt=3, prompts_per_round=4)
    run_iterate(cfg)
    counts = json.loads((tmp_path / "run" / "round_1" / "label.json").read_text())
    items = sample_pairs(read_sample_rows(tmp_path / "run" / "round_1" / "samples.jsonl"), None, seed=1)
    _, w = EnsembleJudge(str(tmp_path / "ens"), "drop", k=0.5).label([p for p, _, _ in items], [a for _, a, _ in items], [b for _, _, b in items])
    pairs = [json.loads(line) for line in open(tmp_path / "run" / "round_1" / "pairs.jsonl")]
    assert len(pairs) == int(w.sum()) == counts["pairs"]
    assert counts["label/dropped"] == pytest.approx(1 - float(w.mean()))
