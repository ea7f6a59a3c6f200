"""Pairwise judging for the online trainers that learn from preferences (``tether nash``, online
DPO): the judge a config names, and the held-out win-rate of the policy against its reference."""

from __future__ import annotations

from pathlib import Path

import torch


def build_judge(spec: str, temperature: float, source, key: str = "judge"):
    """The PairJudge ``spec`` names: ``"reward"`` compares ``source`` (the run's reward source)
    pairwise (``RewardJudge``: hard verdicts at ``temperature`` 0, σ((r − r′)/T) above), or the
    directory of a saved preference model. ``key`` names the setting in error messages."""
    from tether.feedback.judges import RewardJudge
    from tether.models.preference import PreferenceJudge, is_preference_model_dir

    if spec == "reward":
        return RewardJudge(source, temperature=temperature)
    path = Path(spec).expanduser()
    if path.is_dir() and is_preference_model_dir(path):
        if temperature:
            raise ValueError(f"a temperature applies to {key}=reward only; a preference model gives probabilities itself")
        return PreferenceJudge(str(path))
    raise ValueError(f"{key}={spec!r}: expected 'reward' or the directory of a saved preference model (tether pm train)")


def bootstrap_interval(values: torch.Tensor, resamples: int, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` [N]."""
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, values.numel(), (resamples, values.numel()), generator=gen)  # [R, N]
    means = values.double()[idx].mean(1)  # [R]
    lo, hi = torch.quantile(means, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)).tolist()
    return lo, hi


def held_out_win_rate(run, cfg, judge, resamples: int = 1000) -> dict[str, float]:
    """Policy vs reference (the starting policy) on the held-out prompts, ``data.eval_samples``
    replies each: mean P(policy reply ≻ reference reply) under ``judge`` and its 95% bootstrap
    interval. Empty without held-out prompts."""
    from tether.rollout.mixture import sample_reference
    from tether.trainers.online import prompt_text, sample_responses

    prompts, n = run.eval_prompts, cfg.data.eval_samples
    if not prompts or n <= 0:
        return {}
    seed = cfg.data.split_seed * 7 + 1
    ours = sample_responses(run.policy, run.tokenizer, prompts, n, run.params, torch.Generator().manual_seed(seed))
    theirs = sample_reference(run.policy, run.tokenizer, prompts, n, run.params, torch.Generator().manual_seed(seed + 1), run.reference.frozen)
    texts = [prompt_text(p) for p in prompts for _ in range(n)]
    win = judge(texts, ours.texts, theirs.texts).float()  # [E]
    lo, hi = bootstrap_interval(win, resamples, cfg.train.seed)
    return {"held_out/win_rate_vs_reference": float(win.mean()), "held_out/win_rate_vs_reference_low": lo, "held_out/win_rate_vs_reference_high": hi, "held_out/win_rate_n": float(win.numel())}


def finish_with_win_rate(state, run, cfg, judge, resamples: int = 1000) -> dict:
    """``StepState.finish()`` plus the held-out win-rate, printed and added to ``summary.json``."""
    import json

    rows = state.finish()
    extra = held_out_win_rate(run, cfg, judge, resamples)
    if extra:
        print(
            f"held-out win-rate against the reference: {extra['held_out/win_rate_vs_reference']:.3f} "
            f"(95% bootstrap {extra['held_out/win_rate_vs_reference_low']:.3f}-{extra['held_out/win_rate_vs_reference_high']:.3f}, n={int(extra['held_out/win_rate_n'])})"
        )
        rows.update(extra)
        (Path(cfg.train.output_dir) / "summary.json").write_text(json.dumps(rows, indent=2, default=str))
    return rows


__all__ = ["bootstrap_interval", "build_judge", "finish_with_win_rate", "held_out_win_rate"]
