"""Pairwise judging for the online trainers that learn from preferences (``tether nash``, online
DPO): the judge a config names, and the held-out win-rate of the policy against its reference.

Both are thin: the judge comes from ``tether.feedback.judges`` and the win-rate from
``tether.evaluate.policy.evaluate_policy`` (ties as halves, an order-dependent judge asked in both
orders, a paired bootstrap over prompts), so ``tether eval --judge <same spec>`` on the saved model
measures the same thing."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


def build_judge(spec: str, temperature: float, source, key: str = "judge"):
    """The PairJudge ``spec`` names: ``"reward"`` compares ``source`` (the run's reward source)
    pairwise (``RewardJudge``: hard verdicts at ``temperature`` 0, σ((r − r′)/T) above); anything
    else is a ``tether.feedback.judges.load_judge`` spec (a preference model directory, 'vader', a
    reward model directory, ``module:function``). ``key`` names the setting in error messages."""
    from tether.feedback.judges import RewardJudge, load_judge

    if spec == "reward":
        return RewardJudge(source, temperature=temperature)
    try:
        return load_judge(spec, temperature=temperature)
    except ValueError as e:
        raise ValueError(f"{key}={spec!r}: {e} (or 'reward': reward.source compared pairwise)") from e


@dataclass
class JudgedRun:
    """What a judged online loop (nash, online DPO) starts with: the run, its judge, the trainable
    parameters and their optimizer and schedule, the KL controller and the step bookkeeping."""

    run: object  # trainers.online.run.RunSetup, with a reference
    judge: object  # PairJudge
    params: list
    optimizer: object
    scheduler: object
    kl_ctl: object
    state: object  # trainers.online.run.StepState


def start_judged_run(cfg, reward_source, gold_source, judge, spec: str, temperature: float, key: str, title: str, started: float) -> JudgedRun:
    """``start_run``, then the reference even at a fixed ``kl.coef`` of 0 (built before any
    checkpoint is loaded, so it is the starting policy: the judged comparisons and the held-out
    win-rate need it), the judge (``judge`` if given, else ``build_judge(spec, temperature, ...)``),
    AdamW and its schedule over the trainable parameters, the KL controller and ``StepState``."""
    from tether.trainers.common import build_optimizer, build_scheduler
    from tether.trainers.online.reference import Reference
    from tether.trainers.online.run import StepState, make_kl_controller, start_run

    run = start_run(cfg, reward_source, gold_source)
    if run.reference is None:
        run.reference = Reference(cfg.kl.reference, run.policy, cfg.lora.enabled)
    judge = judge if judge is not None else build_judge(spec, temperature, run.source, key)
    params = [q for q in run.policy.parameters() if q.requires_grad]
    optimizer = build_optimizer([{"params": params}], cfg.train)
    scheduler = build_scheduler(optimizer, cfg.train.max_steps, cfg.train)
    kl_ctl = make_kl_controller(cfg.kl)
    state = StepState(run, cfg, run.policy, optimizer, scheduler, kl_ctl, title, started)
    return JudgedRun(run, judge, params, optimizer, scheduler, kl_ctl, state)


def held_out_win_rate(run, cfg, judge, rounds: int = 1000) -> dict[str, float]:
    """Policy vs reference (the starting policy) on the held-out prompts, ``data.eval_samples``
    replies each, through ``evaluate_policy``: the win-rate under ``judge`` (ties as halves) and
    its 95% paired-bootstrap interval over prompts. Empty without held-out prompts."""
    from tether.evaluate.policy import EvalSettings, evaluate_policy

    prompts, n = run.eval_prompts, cfg.data.eval_samples
    if not prompts or n <= 0:
        return {}
    reference = run.reference.frozen if run.reference.frozen is not None else "adapter"
    settings = EvalSettings(
        sampling=run.params, samples_per_prompt=n, seed=cfg.data.split_seed * 7 + 1, bootstrap_rounds=rounds, bootstrap_seed=cfg.train.seed, chunk_size=cfg.model.chunk_size
    )
    model = run.sampler  # the whole policy (under FSDP refreshed from the shards by ``finish``)
    was_training = model.training
    model.eval()
    try:
        result = evaluate_policy(model, run.tokenizer, prompts, reference=reference, judges={"judge": judge}, settings=settings)
    finally:
        model.train(was_training)
    report = result["win_rates"]["judge"]
    out = {"held_out/win_rate_vs_reference": report["win_rate"], "held_out/win_rate_n": float(report["n"])}
    if "win_rate_ci" in report:
        out["held_out/win_rate_vs_reference_low"], out["held_out/win_rate_vs_reference_high"] = report["win_rate_ci"]
    return out


def finish_with_win_rate(state, run, cfg, judge, rounds: int = 1000) -> dict:
    """``StepState.finish()`` plus the held-out win-rate, printed and added to ``summary.json``."""
    import json

    from tether import parallel

    rows = state.finish()  # under FSDP this refreshed the sampler from the shards
    # The main process alone judges (it alone writes the summary); the others wait for it.
    extra = held_out_win_rate(run, cfg, judge, rounds) if parallel.is_main() else {}
    parallel.barrier()
    if extra:
        interval = (
            f" (95% paired bootstrap over prompts {extra['held_out/win_rate_vs_reference_low']:.3f}-{extra['held_out/win_rate_vs_reference_high']:.3f})"
            if "held_out/win_rate_vs_reference_low" in extra
            else ""
        )
        print(f"held-out win-rate against the reference: {extra['held_out/win_rate_vs_reference']:.3f}{interval}, n={int(extra['held_out/win_rate_n'])}")
        rows.update(extra)
        (Path(cfg.train.output_dir) / "summary.json").write_text(json.dumps(rows, indent=2, default=str))
    return rows


__all__ = ["JudgedRun", "build_judge", "finish_with_win_rate", "held_out_win_rate", "start_judged_run"]
