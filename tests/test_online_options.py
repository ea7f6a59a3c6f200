"""Online RL options: sampling.stop_at_eos and sampling.min_new_tokens (and that the min_new_tokens
ban keeps sampling and training log-probs in agreement), a fixed β = 0 running without any
reference, approx-KL / clip fraction left out when they are 0 by construction, and the shared
"fresh run clears the old one" helper. All on the tiny random model."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tether.config import from_dict

torch.set_num_threads(1)

from toy_rewards import LowercaseReward, run_through_and_resumed  # noqa: E402


def _raw(tmp_path, name, steps, sampling=None, **train):
    return {
        "model": {"name_or_path": "tiny"},
        "lora": {"enabled": False},
        "sampling": {"max_new_tokens": 6, **(sampling or {})},
        "data": {"eval_prompts": 0},
        "train": {"output_dir": str(tmp_path / name), "max_steps": steps, "progress": False, "save_every": 0, "threads": 1, **train},
    }


def _metrics(out_dir) -> list[dict]:
    return [json.loads(line) for line in open(f"{out_dir}/metrics.jsonl")]


def _eos_prone_model(bias: float):
    """Tiny model whose head adds ``bias`` to the <|im_end|> logit: responses stop early often."""
    from tether.models import tiny_model_and_tokenizer

    model, tokenizer = tiny_model_and_tokenizer(tie_word_embeddings=False)
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model.lm_head.bias = torch.nn.Parameter(torch.zeros(len(tokenizer)))
    with torch.no_grad():
        model.lm_head.bias[eos] = bias
    return model.eval(), tokenizer, eos


# ---- sampling options ---------------------------------------------------------------------------


def test_sampling_config_reaches_the_engine():
    from tether.trainers.online import SamplingConfig, sampling_params

    params = sampling_params(SamplingConfig(max_new_tokens=9, stop_at_eos=False, min_new_tokens=4))
    assert (params.max_new_tokens, params.stop_at_eos, params.min_new_tokens) == (9, False, 4)
    assert SamplingConfig().stop_at_eos is True and SamplingConfig().min_new_tokens == 0


def test_sampler_ban_renormalises_and_never_draws_banned():
    """logits [0, 1, 2, 3], token 3 banned: the draw is from softmax([0, 1, 2]) and its
    reported log-prob is log(e^y / (1 + e + e^2)), not the unbanned log-softmax."""
    from tether.rollout.engine import Sampler, SamplingParams

    sampler = Sampler(SamplingParams(), torch.Generator().manual_seed(0))
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]]).repeat(4000, 1)
    tokens, logprobs = sampler(logits.clone(), torch.tensor([3]))
    assert not (tokens == 3).any()
    expected = torch.log_softmax(torch.tensor([0.0, 1.0, 2.0]), -1)
    torch.testing.assert_close(logprobs, expected[tokens])
    freq = torch.bincount(tokens, minlength=3)[:3].float() / len(tokens)
    torch.testing.assert_close(freq, expected.exp(), atol=0.03, rtol=0)


def test_min_new_tokens_holds_off_eos_and_training_forward_agrees():
    """With eos made likely, no response stops before min_new_tokens, some stop soon after, and the
    training forward (and a frozen reference copy of the same weights) reproduces the engine's
    renormalised log-probs, so the ratio starts at 1 and the KL at 0."""
    from tether.rollout.engine import SamplingParams, encode_prompts, generate, pad_token_id
    from tether.trainers.online import Reference, ResponseBatch, response_hidden, response_logprobs

    model, tokenizer, eos = _eos_prone_model(bias=4.0)
    prompts = encode_prompts(tokenizer, ["a", "hello there", "xyz", "a longer prompt than the others"] * 2)
    params = SamplingParams(max_new_tokens=10, min_new_tokens=3, temperature=0.9)
    rollout = generate(model, tokenizer, prompts, params, torch.Generator().manual_seed(1))
    lengths = rollout.response_lengths()
    assert (lengths >= 3).all() and rollout.finished.any(), lengths
    assert rollout.banned_ids == (eos,) and rollout.banned_until == 3
    assert not (rollout.response_ids[:, :3] == eos).any()

    batch = ResponseBatch.from_rollout(rollout, pad_token_id(tokenizer))
    with torch.no_grad():
        lp, _ = response_logprobs(model, response_hidden(model, batch), batch, 0.9, chunk_size=7)
        ref = Reference("copy", model, lora_enabled=False).logprobs(model, batch, 0.9, chunk_size=7)
    torch.testing.assert_close(lp, rollout.logprobs, atol=1e-5, rtol=0)
    torch.testing.assert_close(ref, rollout.logprobs, atol=1e-5, rtol=0)
    # The renormalisation matters: without it the early tokens' log-probs are lower.
    unbanned = ResponseBatch(**{**vars(batch), "banned_ids": (), "banned_until": 0})
    with torch.no_grad():
        plain, _ = response_logprobs(model, response_hidden(model, unbanned), unbanned, 0.9, chunk_size=7)
    assert (plain[:, :3] < lp[:, :3] - 1e-3).all()
    torch.testing.assert_close(plain[:, 3:], lp[:, 3:])

    # Differentiable, and right: renormalised over the other tokens, an early token's log-prob
    # z_y/T − log Σ_{v≠eos} e^{z_v/T} does not depend on the eos logit at all.
    model.zero_grad()
    lp, _ = response_logprobs(model, response_hidden(model, batch), batch, 0.9, chunk_size=7)
    lp[:, :3].sum().backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
    assert abs(float(model.lm_head.bias.grad[eos])) < 1e-5
    assert model.lm_head.bias.grad.abs().sum() > 1e-3


def test_min_new_tokens_is_inert_without_stop_at_eos():
    from tether.models import tiny_model_and_tokenizer
    from tether.rollout.engine import SamplingParams, encode_prompts, generate

    model, tokenizer = tiny_model_and_tokenizer()
    rollout = generate(model.eval(), tokenizer, encode_prompts(tokenizer, ["hi", "yo"]), SamplingParams(max_new_tokens=5, stop_at_eos=False, min_new_tokens=3), torch.Generator().manual_seed(0))
    assert rollout.banned_ids == () and rollout.banned_until == 0
    with pytest.raises(ValueError, match="min_new_tokens"):
        SamplingParams(min_new_tokens=-1)


def test_grpo_without_stop_at_eos_generates_max_new_tokens_every_time(tmp_path, monkeypatch):
    """sampling.stop_at_eos=false: every response of every step is exactly max_new_tokens long
    (checked on the rollouts themselves); one epoch of one minibatch logs no approx-KL / clip fraction."""
    import tether.trainers.online.rollout as online_rollout  # collect() draws the step's replies through it
    from tether.trainers.grpo import GRPOConfig, run_grpo

    seen = []
    sample = online_rollout.sample_responses

    def recording(*args, **kw):
        rollout = sample(*args, **kw)
        seen.append(rollout.response_lengths())
        return rollout

    monkeypatch.setattr(online_rollout, "sample_responses", recording)
    raw = _raw(tmp_path, "full", 2, sampling={"stop_at_eos": False, "temperature": 3.0}, prompts_per_step=2, samples_per_prompt=3)
    run_grpo(from_dict(GRPOConfig, raw), reward_source=LowercaseReward())
    assert len(seen) == 2 and all((lengths == 6).all() for lengths in seen)
    for row in _metrics(tmp_path / "full"):
        assert row["response/length"] == 6.0 and row["response/finished"] == 0.0
        assert "policy/approx_kl" not in row and "policy/clip_frac" not in row


def test_ratio_metrics_logged_with_several_updates(tmp_path):
    from tether.trainers.grpo import GRPOConfig, run_grpo

    raw = _raw(tmp_path, "two", 1, prompts_per_step=2, samples_per_prompt=2, epochs=2)
    run_grpo(from_dict(GRPOConfig, raw), reward_source=LowercaseReward())
    (row,) = _metrics(tmp_path / "two")
    assert "policy/approx_kl" in row and "policy/clip_frac" in row


# ---- β = 0: no reference ------------------------------------------------------------------------


@pytest.fixture
def reference_calls(monkeypatch):
    """Counts Reference constructions and reference forward passes."""
    from tether.trainers.online import Reference

    calls = {"built": 0, "logprobs": 0}
    init, logprobs = Reference.__init__, Reference.logprobs

    def counting_init(self, *args, **kw):
        calls["built"] += 1
        init(self, *args, **kw)

    def counting_logprobs(self, *args, **kw):
        calls["logprobs"] += 1
        return logprobs(self, *args, **kw)

    monkeypatch.setattr(Reference, "__init__", counting_init)
    monkeypatch.setattr(Reference, "logprobs", counting_logprobs)
    return calls


@pytest.mark.parametrize("algo", ["ppo", "grpo", "rloo"])
def test_zero_kl_coefficient_never_touches_the_reference(tmp_path, reference_calls, algo):
    """β = 0 (fixed): no reference built (not even the frozen copy of kl.reference=copy), none run,
    in training or the held-out evaluation; kl/ref goes unlogged, the KL monitor stays quiet,
    and everything else is logged as usual."""
    from tether.trainers.grpo import GRPOConfig, run_grpo
    from tether.trainers.rloo import RLOOConfig, run_rloo
    from tether.trainers.ppo import PPOConfig, run_ppo

    cls, run = {"ppo": (PPOConfig, run_ppo), "grpo": (GRPOConfig, run_grpo), "rloo": (RLOOConfig, run_rloo)}[algo]
    raw = _raw(tmp_path, algo, 3, prompts_per_step=2, samples_per_prompt=2, monitor_window=2)
    raw["data"] = {"eval_prompts": 2, "eval_samples": 1}
    raw["kl"] = {"reference": "copy", "coef": 0.0}
    rows = run(from_dict(cls, raw), reward_source=LowercaseReward())
    assert reference_calls == {"built": 0, "logprobs": 0}
    metrics = _metrics(tmp_path / algo)
    assert len(metrics) == 3 and all("kl/ref" not in m and "reward/mean" in m and "time/reference" not in m for m in metrics)
    assert all(m["kl/coef"] == 0.0 for m in metrics)
    assert "held_out/after/reward_mean" in rows and "held_out/after/kl" not in rows and "last/kl/ref" not in rows
    assert all(math.isfinite(m["loss/total"]) for m in metrics)


def test_nonzero_or_adaptive_kl_still_uses_the_reference(tmp_path, reference_calls):
    from tether.trainers.rloo import RLOOConfig, run_rloo

    raw = _raw(tmp_path, "adaptive", 1, prompts_per_step=2, samples_per_prompt=2)
    raw["kl"] = {"coef": 0.0, "adaptive": True}  # the controller may move β away from 0
    run_rloo(from_dict(RLOOConfig, raw), reward_source=LowercaseReward())
    assert reference_calls["built"] == 1 and reference_calls["logprobs"] == 1
    assert "kl/ref" in _metrics(tmp_path / "adaptive")[0]


def test_zero_kl_run_resumes_exactly(tmp_path, reference_calls):
    """A β = 0 run interrupted after its step-2 checkpoint and resumed ends with the same weights
    and the same logged rewards as one that ran through, without ever building a reference."""
    from tether.trainers.ppo import PPOConfig, run_ppo

    def cfg(name):
        raw = _raw(tmp_path, name, 4, prompts_per_step=2, epochs=2, minibatch_size=1, lr=1e-3, save_every=2)
        return from_dict(PPOConfig, {**raw, "kl": {"coef": 0.0}})

    run_through_and_resumed(run_ppo, cfg)
    assert reference_calls == {"built": 0, "logprobs": 0}


# ---- fresh runs clear old state -----------------------------------------------------------------


def test_open_checkpoints_fresh_run_clears_and_resume_finds_latest(tmp_path, capsys):
    from tether.trainers.common import open_checkpoints

    out = tmp_path / "run"
    for step in (1, 2):
        done = out / "checkpoints" / f"step-{step:07d}"
        done.mkdir(parents=True)
        (done / "COMPLETE").write_text(str(step))
    (out / "metrics.jsonl").write_text('{"step": 1}\n')

    checkpoints, latest = open_checkpoints(out, resume=True, keep=3)
    assert latest == out / "checkpoints" / "step-0000002" and checkpoints.keep == 3
    assert (out / "metrics.jsonl").exists()

    checkpoints, latest = open_checkpoints(out, resume=False)
    assert latest is None and not (out / "checkpoints").exists() and not (out / "metrics.jsonl").exists()
    assert "starting afresh" in capsys.readouterr().out

    _, latest = open_checkpoints(out, resume=True)
    assert latest is None and "no checkpoint" in capsys.readouterr().out
