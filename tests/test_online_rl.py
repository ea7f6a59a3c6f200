"""Online RL trainers (PPO, GRPO, RLOO) on the tiny random model with a toy reward.

The toy reward is the fraction of lowercase ASCII letters in the decoded response: a random
tiny model starts near 26/259 ≈ 0.1 and can raise it within a few dozen updates by moving
probability onto 26 of its 259 tokens.
"""

from __future__ import annotations

import json

import pytest
import torch

from tether.config import from_dict

torch.set_num_threads(1)

from toy_rewards import LowercaseReward, run_through_and_resumed  # noqa: E402


def _common(tmp_path, name, steps, **train):
    return {
        "model": {"name_or_path": "tiny"},
        "lora": {"enabled": False},
        "sampling": {"max_new_tokens": 6},
        "data": {"eval_prompts": 0},
        "train": {"output_dir": str(tmp_path / name), "max_steps": steps, "progress": False, "save_every": 0, "threads": 1, **train},
    }


def _rewards(out_dir) -> list[float]:
    return [json.loads(line)["reward/mean"] for line in open(f"{out_dir}/metrics.jsonl")]


# ---- math and placement ----------------------------------------------------------------------


def test_kl_penalized_rewards_hand_values():
    """r_t = −β·(lp_t − ref_t) + score at the last real token, 0 off the mask (β = 0.1, k1).

    row 0: kl = [0.5, 0, 0.5]           -> r = [−0.05, 0, −0.05 + 1.0] = [−0.05, 0, 0.95]
    row 1: kl = [−0.5, 2, (masked)]     -> r = [0.05, −0.2 + (−2.0), 0] = [0.05, −2.2, 0]
    """
    from tether.rl.advantages import kl_penalized_rewards

    scores = torch.tensor([1.0, -2.0])
    lp = torch.tensor([[-1.0, -2.0, -0.5], [-1.0, -1.0, 0.0]])
    ref = torch.tensor([[-1.5, -2.0, -1.0], [-0.5, -3.0, 5.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    rewards, kl = kl_penalized_rewards(scores, lp, ref, mask, kl_coef=0.1, estimator="k1")
    torch.testing.assert_close(rewards, torch.tensor([[-0.05, 0.0, 0.95], [0.05, -2.2, 0.0]]))
    torch.testing.assert_close(kl, torch.tensor([[0.5, 0.0, 0.5], [-0.5, 2.0, 0.0]]))


def test_kl_penalized_rewards_k3_is_nonnegative_and_score_lands_last():
    from tether.rl.advantages import kl_penalized_rewards

    g = torch.Generator().manual_seed(0)
    lp, ref = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)
    scores = torch.tensor([3.0, 4.0, 5.0])
    rewards, kl = kl_penalized_rewards(scores, lp, ref, mask, kl_coef=0.0, estimator="k3")
    assert (kl >= 0).all()
    expected = torch.zeros(3, 5)
    expected[0, 2], expected[1, 4], expected[2, 0] = 3.0, 4.0, 5.0
    torch.testing.assert_close(rewards, expected)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_response_logprobs_match_the_sampler(temperature):
    """The training forward (chunked log-probs at the gathered response positions) gives the
    log-probs the generation engine reported, for prompts of different lengths."""
    from tether.models import tiny_model_and_tokenizer
    from tether.rollout.engine import SamplingParams, encode_prompts, generate, pad_token_id
    from tether.trainers.online import ResponseBatch, response_hidden, response_logprobs

    model, tok = tiny_model_and_tokenizer()
    ids = encode_prompts(tok, ["hi", "a much longer prompt than the first one", "mid length"])
    rollout = generate(model, tok, ids, SamplingParams(max_new_tokens=7, temperature=temperature), torch.Generator().manual_seed(3))
    batch = ResponseBatch.from_rollout(rollout, pad_token_id(tok))
    with torch.no_grad():
        lp, ent = response_logprobs(model, response_hidden(model, batch), batch, temperature, chunk_size=4, entropy=True)
    torch.testing.assert_close(lp, rollout.logprobs, atol=1e-5, rtol=1e-5)
    assert torch.equal(batch.mask, rollout.response_mask)
    assert (ent[batch.mask] > 0).all() and (ent[~batch.mask] == 0).all()
    # a subset of rows lines up with the same rows of the full batch
    sub = ResponseBatch.from_rollout(rollout, pad_token_id(tok), torch.tensor([2, 0]))
    with torch.no_grad():
        lp_sub, _ = response_logprobs(model, response_hidden(model, sub), sub, temperature, chunk_size=4)
    torch.testing.assert_close(lp_sub, lp[[2, 0]], atol=1e-5, rtol=1e-5)


def test_shared_prompt_response_batch_equals_padded_rows():
    """Groups of responses to one prompt (and a minibatch that splits and reorders them): the
    shared-prompt layout gives the sampler's log-probs, the padded rows' hidden states and the
    same parameter gradients, with fewer tokens through the model."""
    from tether.models import tiny_model_and_tokenizer
    from tether.rollout.engine import SamplingParams, encode_prompts, generate, pad_token_id
    from tether.trainers.online import ResponseBatch, response_hidden, response_logprobs

    model, tok = tiny_model_and_tokenizer()
    ids = encode_prompts(tok, ["hi", "a much longer prompt than the first one", "mid length"])
    group = 3
    rollout = generate(model, tok, [p for p in ids for _ in range(group)], SamplingParams(max_new_tokens=6), torch.Generator().manual_seed(5))
    for rows in (None, torch.tensor([7, 0, 4, 1, 8])):
        results = {}
        for share in (False, True):
            batch = ResponseBatch.from_rollout(rollout, pad_token_id(tok), rows, share_prompt=share)
            model.zero_grad()
            hidden = response_hidden(model, batch)  # [B, Tr, H]
            lp, _ = response_logprobs(model, hidden, batch, 1.0, chunk_size=8)
            (lp * torch.linspace(0.5, 1.5, lp.numel()).view_as(lp)).sum().backward()
            grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
            results[share] = (batch, hidden.detach(), lp.detach(), grads)
        (padded, h_pad, lp_pad, g_pad), (shared, h_sh, lp_sh, g_sh) = results[False], results[True]
        expected = rollout.logprobs if rows is None else rollout.logprobs[rows]
        torch.testing.assert_close(lp_sh, expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(lp_pad, expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(h_sh[shared.mask], h_pad[padded.mask], atol=1e-5, rtol=1e-5)
        for name, g in g_pad.items():
            torch.testing.assert_close(g_sh[name], g, atol=1e-5, rtol=1e-4, msg=name)
        real = lambda b: int((b.input_ids != pad_token_id(tok)).sum())  # noqa: E731
        assert real(shared) < real(padded)


def test_entropy_surrogate_gradient_matches_exact_entropy_gradient():
    """E_y~π[∇(−sg(log π(y))·log π(y))] = ∇H(π): checked exactly by summing over y with weights π(y)."""
    from tether.trainers.online import entropy_surrogate

    logits = torch.tensor([0.3, -1.0, 2.0, 0.5], requires_grad=True)
    logp = torch.log_softmax(logits, -1)
    expected = torch.autograd.grad(-(logp.exp() * logp).sum(), logits, retain_graph=True)[0]
    surrogate = (logp.exp().detach() * entropy_surrogate(logp)).sum()  # expectation over y, weights not differentiated
    got = torch.autograd.grad(surrogate, logits)[0]
    torch.testing.assert_close(got, expected)


# ---- trainers learn ---------------------------------------------------------------------------


def _gain(rewards: list[float], k: int = 5) -> float:
    return sum(rewards[-k:]) / k - sum(rewards[:k]) / k


def test_ppo_raises_toy_reward(tmp_path):
    from tether.trainers.ppo import PPOConfig, run_ppo

    raw = _common(tmp_path, "ppo", 25, prompts_per_step=8, epochs=2, minibatch_size=8, lr=1e-2)
    cfg = from_dict(PPOConfig, {**raw, "ppo": {"vf_coef": 0.5, "value_lr": 1e-2}})
    rows = run_ppo(cfg, reward_source=LowercaseReward())
    rewards = _rewards(cfg.train.output_dir)
    assert len(rewards) == 25
    assert _gain(rewards) > 0.1, rewards
    assert "last/value/explained_variance" in rows and "last/policy/clip_frac" in rows


@pytest.mark.parametrize("algo", ["grpo", "rloo"])
def test_critic_free_raises_toy_reward(tmp_path, algo):
    from tether.trainers.grpo import GRPOConfig, run_grpo
    from tether.trainers.rloo import RLOOConfig, run_rloo

    cls, run = {"grpo": (GRPOConfig, run_grpo), "rloo": (RLOOConfig, run_rloo)}[algo]
    cfg = from_dict(cls, _common(tmp_path, algo, 25, prompts_per_step=4, samples_per_prompt=4, lr=3e-3))
    run(cfg, reward_source=LowercaseReward())
    rewards = _rewards(cfg.train.output_dir)
    assert _gain(rewards) > 0.1, rewards


# ---- checkpoints, resume, saving --------------------------------------------------------------


def _ppo_cfg(tmp_path, name):
    from tether.trainers.ppo import PPOConfig

    raw = _common(tmp_path, name, 4, prompts_per_step=4, epochs=2, minibatch_size=2, lr=1e-3, save_every=2)
    return from_dict(PPOConfig, {**raw, "kl": {"adaptive": True, "target": 0.5, "horizon": 20}, "ppo": {"target_kl": 10.0}})


def test_ppo_resume_after_interruption_matches_uninterrupted_run(tmp_path):
    """Policy, value head, optimizer, adaptive KL controller and RNG all come back from the checkpoint."""
    from safetensors.torch import load_file

    from tether.trainers.ppo import run_ppo

    full, cut = run_through_and_resumed(run_ppo, lambda name: _ppo_cfg(tmp_path, name))
    va = load_file(f"{full}/model/value_head.safetensors")
    vb = load_file(f"{cut}/model/value_head.safetensors")
    for k in va:
        torch.testing.assert_close(va[k], vb[k], rtol=0, atol=0)
    assert va["linear.weight"].abs().sum() > 0  # the value head trained
    la = [json.loads(line) for line in open(f"{full}/metrics.jsonl")]
    lb = [json.loads(line) for line in open(f"{cut}/metrics.jsonl")]
    assert [r["kl/coef"] for r in la] == [r["kl/coef"] for r in lb[-len(la) :]]


def test_grpo_resume_after_interruption_matches_uninterrupted_run(tmp_path):
    """The critic-free loop restores policy, optimizer, KL controller and RNG like PPO does."""
    from tether.trainers.grpo import GRPOConfig, run_grpo

    def cfg(name):
        raw = _common(tmp_path, name, 4, prompts_per_step=2, samples_per_prompt=3, epochs=2, minibatch_size=3, lr=1e-3, save_every=2)
        return from_dict(GRPOConfig, raw)

    run_through_and_resumed(run_grpo, cfg)


def test_saved_policy_loads_with_transformers_and_value_head(tmp_path):
    from transformers import AutoModelForCausalLM

    from tether.trainers.ppo import load_value_head, run_ppo

    cfg = _ppo_cfg(tmp_path, "save")
    run_ppo(cfg, reward_source=LowercaseReward())
    model = AutoModelForCausalLM.from_pretrained(f"{cfg.train.output_dir}/model")
    head = load_value_head(f"{cfg.train.output_dir}/model")
    assert head(torch.zeros(2, 3, model.config.hidden_size)).shape == (2, 3)
    summary = json.loads(open(f"{cfg.train.output_dir}/summary.json").read())
    assert summary["steps"] == 4 and "monitor_warnings" in summary


def test_lora_ppo_with_separate_critic_and_held_out_eval(tmp_path):
    """LoRA policy (reference = adapters off), a separate critic, and the before/after evaluation."""
    from tether.trainers.ppo import PPOConfig, run_ppo

    raw = _common(tmp_path, "lora", 2, prompts_per_step=4, epochs=1, minibatch_size=0, lr=1e-3)
    raw["lora"] = {"enabled": True, "r": 4, "alpha": 8}
    raw["data"] = {"eval_prompts": 3, "eval_samples": 2}
    cfg = from_dict(PPOConfig, {**raw, "ppo": {"critic": "separate"}})
    rows = run_ppo(cfg, reward_source=LowercaseReward(), gold_source=LowercaseReward())
    for stage in ("before", "after"):
        assert rows[f"held_out/{stage}/n"] == 6.0
        assert rows[f"held_out/{stage}/gold_mean"] == pytest.approx(rows[f"held_out/{stage}/reward_mean"])
    assert rows["held_out/before/kl"] == pytest.approx(0.0, abs=1e-5)  # adapters start as a no-op
    assert (tmp_path / "lora" / "critic" / "value_head.safetensors").exists()


def test_critic_free_rejects_group_of_one(tmp_path):
    from tether.trainers.grpo import GRPOConfig, run_grpo

    cfg = from_dict(GRPOConfig, _common(tmp_path, "g1", 1, samples_per_prompt=1))
    with pytest.raises(ValueError, match="samples_per_prompt"):
        run_grpo(cfg, reward_source=LowercaseReward())


def test_max_minutes_stops_early_and_still_saves(tmp_path):
    from tether.trainers.rloo import RLOOConfig, run_rloo

    cfg = from_dict(RLOOConfig, _common(tmp_path, "budget", 50, prompts_per_step=2, samples_per_prompt=2, max_minutes=1e-6))
    rows = run_rloo(cfg, reward_source=LowercaseReward())
    assert rows["steps"] == 1 and len(_rewards(cfg.train.output_dir)) == 1
    assert (tmp_path / "budget" / "model" / "model.safetensors").exists()
