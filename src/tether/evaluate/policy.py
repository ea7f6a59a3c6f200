"""``evaluate_policy``: one evaluation of a policy against a reference, for ``tether eval`` and every trainer.

    from tether.evaluate.policy import EvalSettings, evaluate_policy, summary_metrics, write_eval

    result = evaluate_policy(policy, tokenizer, prompts, reference=base_model,
                             reward_sources={"vader": vader_reward()}, judges={"vader": load_judge("vader")},
                             settings=EvalSettings(samples_per_prompt=2))
    logger.log(step, summary_metrics(result))      # flat floats, e.g. "eval/win_rate/vader"
    write_eval(result, "runs/x/eval")              # eval.json + samples.jsonl

What it measures, on the same prompts for both models (responses sampled by
``tether.rollout.engine``, seeded):

* ``rewards[name]``: mean / std / stderr of each reward source for the policy and the reference,
  and of the paired difference, each with a paired-bootstrap interval over prompts;
* ``win_rates[judge]``: the policy's win-rate against the reference (ties as halves), its
  length-controlled version and their intervals (``tether.evaluate.winrate``);
* ``kl``: KL(π ‖ π_ref) per response, Σ_t log π(y_t) − log π_ref(y_t) over the policy's own samples
  (at the sampling temperature), mean / std / stderr and interval;
* ``length`` (generated tokens) and ``diversity`` (distinct-1, distinct-2 over words) of both.

The reference is a model sharing the policy's tokenizer (for KL), the string ``"adapter"`` (the
policy itself with its LoRA adapters off, as the LoRA trainers' reference), or None (rewards,
length and diversity of the policy only). The reference samples from a different random stream
than the policy (``reference_seed``, default seed + 1): with the same stream the same model would
give the same responses and every comparison of a model with itself would be a tie.
"""

from __future__ import annotations

import json
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from tether.config import opt


def _default_sampling():
    from tether.rollout.engine import SamplingParams

    return SamplingParams()


@dataclass
class EvalSettings:
    sampling: object = field(default_factory=_default_sampling, metadata={"help": "A tether.rollout.engine.SamplingParams for both models."})
    samples_per_prompt: int = opt(1, "Responses per prompt from each model; the samples of a prompt are paired slot by slot and resampled together.")
    seed: int = opt(0, "Seed of the policy's sampling.")
    reference_seed: int | None = opt(None, "Seed of the reference's sampling (None: seed + 1, an independent stream).")
    batch_size: int = opt(16, "Responses generated per batch.")
    bootstrap_rounds: int = opt(1000, "Rounds of the paired bootstrap over prompts (0: no intervals).")
    confidence: float = opt(0.95, "Coverage of the percentile intervals.")
    bootstrap_seed: int = opt(0, "Seed of the bootstrap resampling.")
    lc_c: float = opt(100.0, "Inverse ridge strength C on the length slope of the length-controlled fit (b² / 2C on the summed log-loss).")
    chunk_size: int = opt(1024, "Rows per chunk in the reference log-prob pass (bounds the logits held).")


def _named(items, kind: str) -> dict:
    """A list of objects with a ``name`` (or a dict name -> object) as a dict; duplicate names are an error."""
    if items is None:
        return {}
    if isinstance(items, dict):
        return dict(items)
    out: dict = {}
    for item in items:
        name = getattr(item, "name", None) or type(item).__name__
        if name in out:
            raise ValueError(f"two {kind} are named {name!r}; pass a dict to name them apart")
        out[name] = item
    return out


def _same_vocab(a, b) -> bool:
    return a is b or a.get_vocab() == b.get_vocab()


def _reference_model(policy, reference):
    """(model to run, context that makes it the reference) for a module or ``"adapter"``."""
    if isinstance(reference, str):
        if reference != "adapter":
            raise ValueError(f"reference must be a model, 'adapter' or None, got {reference!r}")
        from tether.models import disabled_adapter
        from tether.models.lora import is_peft_model

        if not is_peft_model(policy):
            raise ValueError("reference='adapter' needs a policy with LoRA adapters (the reference is the policy with them off)")
        return policy, lambda: disabled_adapter(policy)
    return reference, nullcontext


def _kl_hook(model, context, tokenizer, settings: EvalSettings):
    """``reference_logprobs(rollout) -> [B, Tr]`` through the online trainers' own log-prob code."""
    from tether.rollout.engine import pad_token_id
    from tether.trainers.online.batch import ResponseBatch, response_hidden, response_logprobs

    pad = pad_token_id(tokenizer)

    @torch.no_grad()
    def reference_logprobs(rollout) -> torch.Tensor:
        batch = ResponseBatch.from_rollout(rollout, pad)
        was_training = model.training
        model.eval()
        try:
            with context():
                lp, _ = response_logprobs(model, response_hidden(model, batch), batch, settings.sampling.temperature, settings.chunk_size)  # [B, Tr]
        finally:
            model.train(was_training)
        return lp

    return reference_logprobs


def reference_seed(settings: EvalSettings) -> int:
    """The reference's sampling seed: ``reference_seed``, else ``seed + 1`` (an independent stream)."""
    return settings.seed + 1 if settings.reference_seed is None else settings.reference_seed


def sample_reference(reference, tokenizer, prompts: list, reward_sources, settings: EvalSettings):
    """The reference's side of ``evaluate_policy`` on its own (a ``ScoredSamples``), for callers that
    evaluate several policies against one reference: pass it back as ``reference_samples=``."""
    from tether.evaluate.online import sample_and_score

    return sample_and_score(reference, tokenizer, prompts, _named(reward_sources, "reward sources"), settings.sampling, settings.samples_per_prompt, seed=reference_seed(settings), batch_size=settings.batch_size)


def evaluate_policy(policy, tokenizer, prompts: list, *, reference=None, reference_tokenizer=None, reward_sources=None, judges=None, settings: EvalSettings | None = None, reference_samples=None) -> dict:
    """Evaluate ``policy`` on ``prompts`` (strings or conversations) against ``reference``.

    ``reward_sources`` / ``judges``: lists of objects with a ``name`` or dicts name -> object
    (``tether.rollout.rewards.load_reward_source``, ``tether.feedback.judges.load_judge``). Judges
    need a reference. Returns a JSON-ready dict (see the module docstring; ``samples`` holds one
    row per response pair) for ``write_eval``, ``summary_metrics`` and ``print_eval``.
    ``reference_samples``: the reference's samples from ``sample_reference`` with the same prompts,
    sources and settings, used instead of sampling the reference again (KL still needs ``reference``).
    """
    from tether.evaluate.online import sample_and_score
    from tether.evaluate.stats import (
        bootstrap_counts,
        bootstrap_mean,
        distinct_n,
        mean_std_stderr,
    )
    from tether.evaluate.winrate import judge_pairs, win_rate_report

    settings = settings or EvalSettings()
    sources, judges = _named(reward_sources, "reward sources"), _named(judges, "judges")
    if judges and reference is None:
        raise ValueError("judges compare the policy with a reference: give reference= (a model or 'adapter')")
    if not prompts:
        raise ValueError("evaluate_policy needs at least one prompt")
    ref_model, ref_context = _reference_model(policy, reference) if reference is not None else (None, nullcontext)
    ref_tokenizer = reference_tokenizer or tokenizer
    hook, notes = None, []
    if ref_model is not None:
        if _same_vocab(tokenizer, ref_tokenizer):
            hook = _kl_hook(ref_model, ref_context, tokenizer, settings)
        else:
            notes.append("no KL: the reference's tokenizer differs from the policy's")
            print("tether eval: warning: the reference's tokenizer differs from the policy's; KL to the reference is not measured")
    S = settings.samples_per_prompt
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    pol = sample_and_score(policy, tokenizer, prompts, sources, settings.sampling, S, seed=settings.seed, batch_size=settings.batch_size, reference_logprobs=hook)
    seconds["policy"] = time.perf_counter() - started
    ref = None
    if reference_samples is not None:
        if reference_samples.prompt_index != pol.prompt_index or set(reference_samples.rewards) != set(sources):
            raise ValueError("reference_samples were drawn for other prompts, samples per prompt or reward sources than this evaluation's")
        ref = reference_samples
    elif ref_model is not None:
        started = time.perf_counter()
        with ref_context():
            ref = sample_and_score(ref_model, ref_tokenizer, prompts, sources, settings.sampling, S, seed=reference_seed(settings), batch_size=settings.batch_size)
        seconds["reference"] = time.perf_counter() - started

    index = torch.tensor(pol.prompt_index)  # [N]
    counts = bootstrap_counts(len(prompts), max(settings.bootstrap_rounds, 1), settings.bootstrap_seed)  # [R, P]

    def summary(values: torch.Tensor) -> dict:
        return bootstrap_mean(values, index, counts, settings.confidence) if settings.bootstrap_rounds > 0 else mean_std_stderr(values)

    result: dict = {"prompts": len(prompts), "samples_per_prompt": S, "rewards": {}, "win_rates": {}}
    for name in sources:
        entry = {"policy": summary(pol.rewards[name])}
        if ref is not None:
            entry["reference"] = summary(ref.rewards[name])
            entry["difference"] = summary(pol.rewards[name] - ref.rewards[name])
        result["rewards"][name] = entry
    texts = [p if isinstance(p, str) else p[-1]["content"] for p in prompts]
    row_prompts = [texts[i] for i in pol.prompt_index]
    judged: dict[str, dict] = {}
    started = time.perf_counter()
    for name, judge in judges.items():
        judged[name] = judge_pairs(judge, row_prompts, pol.texts, ref.texts)
        result["win_rates"][name] = win_rate_report(
            judged[name]["verdict"], pol.lengths, ref.lengths, index, rounds=settings.bootstrap_rounds, confidence=settings.confidence,
            seed=settings.bootstrap_seed, c=settings.lc_c, prob=judged[name]["prob"], disagree=judged[name].get("disagree"),
        )
    if judges:
        seconds["judging"] = time.perf_counter() - started
    if pol.kl is not None:
        result["kl"] = summary(pol.kl)
    result["length"] = {"policy": mean_std_stderr(pol.lengths)}
    result["diversity"] = {"policy": {"distinct_1": distinct_n(pol.texts, 1), "distinct_2": distinct_n(pol.texts, 2)}}
    if ref is not None:
        result["length"]["reference"] = mean_std_stderr(ref.lengths)
        result["diversity"]["reference"] = {"distinct_1": distinct_n(ref.texts, 1), "distinct_2": distinct_n(ref.texts, 2)}
    result["settings"] = asdict(settings)
    result["seconds"] = {k: round(v, 2) for k, v in seconds.items()}
    if notes:
        result["notes"] = notes
    result["samples"] = _sample_rows(row_prompts, pol, ref, sources, judged, S)
    return result


def _sample_rows(row_prompts, pol, ref, sources, judged, samples: int) -> list[dict]:
    rows = []
    for r, prompt in enumerate(row_prompts):
        row = {"prompt": prompt, "prompt_index": pol.prompt_index[r], "sample": r % samples, "policy": pol.texts[r], "policy_tokens": int(pol.lengths[r]), "policy_token_ids": pol.response_ids[r]}
        if ref is not None:
            row.update(reference=ref.texts[r], reference_tokens=int(ref.lengths[r]))
        row["rewards"] = {name: ({"policy": float(pol.rewards[name][r])} | ({"reference": float(ref.rewards[name][r])} if ref is not None else {})) for name in sources}
        if judged:
            row["verdicts"] = {name: float(j["verdict"][r]) for name, j in judged.items()}
            row["judge_prob"] = {name: float(j["prob"][r]) for name, j in judged.items()}
            disagree = {name: bool(j["disagree"][r]) for name, j in judged.items() if "disagree" in j}
            if disagree:
                row["order_disagree"] = disagree
        if pol.kl is not None:
            row["kl"] = float(pol.kl[r])
        rows.append(row)
    return rows


def summary_metrics(result: dict, prefix: str = "eval/") -> dict[str, float]:
    """The headline figures of an ``evaluate_policy`` result as flat floats, for a trainer's logger."""
    out: dict[str, float] = {}
    for name, entry in result["rewards"].items():
        out[f"{prefix}reward/{name}"] = entry["policy"]["mean"]
        if "reference" in entry:
            out[f"{prefix}reward/{name}/reference"] = entry["reference"]["mean"]
    for name, report in result["win_rates"].items():
        out[f"{prefix}win_rate/{name}"] = report["win_rate"]
        out[f"{prefix}lc_win_rate/{name}"] = report["lc_win_rate"]
    if "kl" in result:
        out[f"{prefix}kl"] = result["kl"]["mean"]
    out[f"{prefix}length"] = result["length"]["policy"]["mean"]
    out[f"{prefix}distinct_2"] = result["diversity"]["policy"]["distinct_2"]
    return out


def write_eval(result: dict, out_dir: str | Path, stem: str | None = None) -> Path:
    """``out_dir/eval.json`` (everything but the samples) and ``out_dir/samples.jsonl`` (one row per pair);
    with ``stem`` (a trainer's ``step_<N>``): ``out_dir/<stem>.json`` and ``out_dir/<stem>.samples.jsonl``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary, samples = (out / "eval.json", out / "samples.jsonl") if stem is None else (out / f"{stem}.json", out / f"{stem}.samples.jsonl")
    summary.write_text(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=2) + "\n", encoding="utf-8")
    with open(samples, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in result.get("samples", []))
    return summary


__all__ = ["EvalSettings", "evaluate_policy", "reference_seed", "sample_reference", "summary_metrics", "write_eval"]
