"""`evaluate_policy` and `tether eval` on tiny random models."""

from __future__ import annotations

import json

import pytest
import torch

from tether.evaluate.policy import EvalSettings, evaluate_policy, summary_metrics
from tether.feedback.judges import RewardJudge
from tether.models.tiny import tiny_model_and_tokenizer
from tether.rollout.engine import SamplingParams, encode_prompts
from tether.rollout.rewards import FunctionReward

torch.set_num_threads(1)

PROMPTS = ["Write a review.", "Say something kind.", "Describe a film."]


def _letters():
    return FunctionReward(lambda p, r: sum(c.isalpha() for c in r) / max(len(r), 1), name="letters")


def _settings(**kw):
    base = {"sampling": SamplingParams(max_new_tokens=6, temperature=1.3), "samples_per_prompt": 2, "bootstrap_rounds": 50}
    return EvalSettings(**{**base, **kw})


@torch.no_grad()
def _sequence_logprob(model, prompt_ids: list[int], response_ids: list[int], temperature: float) -> float:
    """Σ_t log softmax(logits_t / T)[y_t] over the response, from one plain full forward pass."""
    ids = torch.tensor([prompt_ids + response_ids])  # [1, T]
    logp = torch.log_softmax(model(ids).logits[0].float() / temperature, -1)  # [T, V]
    p = len(prompt_ids)
    return float(sum(logp[p - 1 + t, y] for t, y in enumerate(response_ids)))


def test_kl_equals_a_plain_full_forward_computation():
    """KL per response = Σ_t log π(y_t) − log π_ref(y_t) over the policy's own sampled tokens, both at
    the sampling temperature: recomputed here from full forward passes of both tiny models on
    prompt + response (no cache, no chunking) and compared response by response, and the mean."""
    policy, tok = tiny_model_and_tokenizer(seed=1)
    reference, _ = tiny_model_and_tokenizer(seed=2)
    policy.eval(), reference.eval()
    result = evaluate_policy(policy, tok, PROMPTS, reference=reference, reward_sources=[_letters()], settings=_settings())
    prompt_ids = encode_prompts(tok, PROMPTS)
    rows = result["samples"]
    assert len(rows) == len(PROMPTS) * 2
    expected = []
    for row in rows:
        response = row["policy_token_ids"]  # the sampled tokens, the stop token included
        assert len(response) == row["policy_tokens"] and tok.decode(response, skip_special_tokens=True) == row["policy"]
        ids = prompt_ids[row["prompt_index"]]
        expected.append(_sequence_logprob(policy, ids, response, 1.3) - _sequence_logprob(reference, ids, response, 1.3))
        assert row["kl"] == pytest.approx(expected[-1], abs=1e-4)
    assert result["kl"]["mean"] == pytest.approx(sum(expected) / len(expected), abs=1e-4)


def test_a_policy_against_itself_wins_half_and_pays_no_kl():
    """The same model as policy and reference: the KL of every response is 0 (up to the engine's
    float rounding), and with a reward judge every pair is judged by its two rewards; the reference's
    responses come from another random stream, so they differ from the policy's."""
    policy, tok = tiny_model_and_tokenizer(seed=1)
    judge = RewardJudge(_letters())
    result = evaluate_policy(policy, tok, PROMPTS, reference=policy, reward_sources=[_letters()], judges=[judge], settings=_settings(samples_per_prompt=4))
    assert abs(result["kl"]["mean"]) < 1e-4
    w = result["win_rates"]["letters"]
    assert w["n"] == 12 and w["wins"] + w["ties"] + w["losses"] == 12
    assert w["win_rate"] == pytest.approx((w["wins"] + 0.5 * w["ties"]) / 12)
    assert w["win_rate_ci"][0] <= w["win_rate"] <= w["win_rate_ci"][1]
    assert any(r["policy"] != r["reference"] for r in result["samples"])
    metrics = summary_metrics(result)
    assert metrics["eval/win_rate/letters"] == w["win_rate"] and "eval/kl" in metrics


def test_judges_need_a_reference():
    policy, tok = tiny_model_and_tokenizer(seed=1)
    with pytest.raises(ValueError, match="reference"):
        evaluate_policy(policy, tok, PROMPTS, judges=[RewardJudge(_letters())], settings=_settings())


def test_cli_end_to_end_reads_the_reference_from_the_run_config(tmp_path, capsys):
    """A policy saved as <run>/model with <run>/config.yaml naming its starting model: `tether eval`
    with no --reference compares against that model, writes eval.json and samples.jsonl, and prints
    the table."""
    import yaml

    from tether.cli import main
    from tether.models import save_model

    base, tok = tiny_model_and_tokenizer(seed=2)
    save_model(base, tok, tmp_path / "base")
    policy, _ = tiny_model_and_tokenizer(seed=1)
    save_model(policy, tok, tmp_path / "run" / "model")
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump({"model": {"name_or_path": str(tmp_path / "base")}}))
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Tell me about item {i}."}) + "\n" for i in range(6)))
    out = tmp_path / "eval"
    code = main([
        "eval", "--policy", str(tmp_path / "run" / "model"), "--prompts", str(prompts), "--held-out", "4",
        "--reward", "tests.toy_rewards:LowercaseReward", "--judge", "vader", "--samples", "2", "--max-new-tokens", "5",
        "--bootstrap", "40", "--output", str(out),
    ])
    assert code == 0
    report = json.loads((out / "eval.json").read_text())
    assert report["reference"] == str(tmp_path / "base")
    assert report["prompts"] == 4 and report["samples_per_prompt"] == 2
    assert set(report["rewards"]) == {"tests.toy_rewards:LowercaseReward"} and set(report["win_rates"]) == {"vader"}
    assert "kl" in report and "lc_win_rate_ci" in report["win_rates"]["vader"]
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and {"prompt", "policy", "reference", "rewards", "verdicts", "kl"} <= set(rows[0])
    printed = capsys.readouterr().out
    assert "win-rate vs reference (vader)" in printed and "length-controlled" in printed


def test_cli_without_reference_or_run_config_says_what_to_pass(tmp_path, capsys):
    from tether.cli import main
    from tether.models import save_model

    policy, tok = tiny_model_and_tokenizer(seed=1)
    save_model(policy, tok, tmp_path / "lonely")
    assert main(["eval", "--policy", str(tmp_path / "lonely")]) == 1
    assert "pass --reference" in capsys.readouterr().err


def test_cli_reward_model_as_reward_judge_and_accuracy_on_pairs(tmp_path):
    """A saved tiny reward model serves as --reward, --judge and, with --pairs, is scored for accuracy
    and calibration exactly as `tether rm eval` scores it (the same report)."""
    from tether.cli import main
    from tether.models.reward import RewardModel
    from tether.evaluate.reward_model import run_rm_eval

    backbone, tok = tiny_model_and_tokenizer(seed=3)
    torch.manual_seed(3)
    RewardModel(backbone, tok).eval().save_pretrained(tmp_path / "rm")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"Q{i}", "chosen": "a good answer" * (i + 1), "rejected": "bad"}) + "\n" for i in range(5)))
    rm = str(tmp_path / "rm")
    out = tmp_path / "eval"
    code = main([
        "eval", "--policy", "tiny", "--reference", "tiny", "--held-out", "3", "--reward", rm, "--judge", rm,
        "--max-new-tokens", "4", "--bootstrap", "20", "--pairs", str(pairs), "--reward-model", rm, "--output", str(out),
    ])
    assert code == 0
    report = json.loads((out / "eval.json").read_text())
    assert report["win_rates"][rm]["n"] == 3 and rm in report["rewards"]
    expected = run_rm_eval(rm, str(pairs))
    assert report["reward_model"]["accuracy"] == pytest.approx(expected["accuracy"]) and report["reward_model"]["ece"] == pytest.approx(expected["ece"])


def test_cli_pairs_need_a_reward_model(capsys):
    from tether.cli import main

    assert main(["eval", "--policy", "tiny", "--reference", "tiny", "--pairs", "bundled:preferences"]) == 1
    assert "--pairs and --reward-model go together" in capsys.readouterr().err


def test_adapter_reference_equals_a_frozen_copy_of_the_base():
    """reference='adapter' (the LoRA policy with its adapters off) gives the same samples, rewards and
    KL as passing a copy of the base model taken before the adapters were added; the adapters are
    perturbed first so the KL is not 0."""
    import copy

    from tether.models import apply_lora

    base, tok = tiny_model_and_tokenizer(seed=4)
    frozen = copy.deepcopy(base).eval()
    policy = apply_lora(base, r=4, alpha=8)
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    policy.eval()
    kw = {"reward_sources": [_letters()], "settings": _settings()}
    with_adapter = evaluate_policy(policy, tok, PROMPTS, reference="adapter", **kw)
    with_copy = evaluate_policy(policy, tok, PROMPTS, reference=frozen, **kw)
    assert abs(with_copy["kl"]["mean"]) > 1e-2
    assert with_adapter["kl"]["mean"] == pytest.approx(with_copy["kl"]["mean"], abs=1e-5)
    assert [r["reference"] for r in with_adapter["samples"]] == [r["reference"] for r in with_copy["samples"]]


def test_held_out_prompts_warn_when_the_policy_trained_on_some(capsys):
    """A run that held out 4 prompts of the file (split seed 1234) trained on the rest: asking for 8
    held-out prompts with that seed includes 4 of its training prompts, and says so."""
    from tether.evaluate.command import held_out_prompts

    config = {"data": {"path": "bundled:review_prompts", "eval_prompts": 4, "split_seed": 1234}}
    assert len(held_out_prompts("bundled:review_prompts", 4, 1234, config)) == 4
    assert "warning" not in capsys.readouterr().err
    assert len(held_out_prompts("bundled:review_prompts", 8, 1234, config)) == 8
    assert "were training prompts (use --held-out 4 --split-seed 1234)" in capsys.readouterr().err


def test_reference_samples_drawn_once_give_the_same_evaluation():
    """sample_reference + reference_samples= (the pipeline's reuse across eval stages) gives exactly
    the evaluation that sampling the reference inside evaluate_policy gives; samples drawn for other
    settings are refused."""
    from tether.evaluate.policy import sample_reference

    policy, tok = tiny_model_and_tokenizer(seed=1)
    reference, _ = tiny_model_and_tokenizer(seed=2)
    policy.eval(), reference.eval()
    kw = {"reward_sources": [_letters()], "judges": [RewardJudge(_letters())], "settings": _settings()}
    plain = evaluate_policy(policy, tok, PROMPTS, reference=reference, **kw)
    drawn = sample_reference(reference, tok, PROMPTS, [_letters()], _settings())
    reused = evaluate_policy(policy, tok, PROMPTS, reference=reference, reference_samples=drawn, **kw)
    for key in ("rewards", "win_rates", "kl", "length", "diversity", "samples"):
        assert reused[key] == plain[key], key
    other = sample_reference(reference, tok, PROMPTS, [_letters()], _settings(samples_per_prompt=3))
    with pytest.raises(ValueError, match="other prompts, samples per prompt"):
        evaluate_policy(policy, tok, PROMPTS, reference=reference, reference_samples=other, **kw)
