"""The bundled experiment of ``tether pipeline`` as stages (``tether.pipeline.stages``).

    prompts  -> the fixed held-out split of the task's prompts
    sample   -> K candidate replies per training prompt from the starting model
    label    -> simulated annotators (the gold function through Bradley-Terry noise) label pairs;
                the pairs of some prompts are held out, labelled by the gold function itself
    rm       -> a LoRA reward model on the noisy pairs; accuracy and calibration on the held-out ones
    ppo, grpo-> trained on the reward model (the proxy), the gold reward logged beside it
    dpo      -> trained on the noisy pairs directly
    eval-*   -> each policy against the starting policy on the held-out prompts: gold reward and
                win-rate (the gold function as judge), the proxy reward, KL, length
then ``report.html`` (``tether.pipeline.report_data``). With ``run.sweep`` each method also runs at
every KL strength of its ``sweep`` list (stages ``ppo-kl0.01`` ...), for the reward-versus-KL frontier.

The trainers are called only through their config classes and run functions, and read back only
through their output files (``metrics.jsonl``, ``summary.json``, ``model/``).
"""

from __future__ import annotations

import json
import random
import sys
from dataclasses import asdict
from pathlib import Path

from tether.pipeline.config import METHODS, PipelineConfig, PipelineMethod, PipelineRM
from tether.pipeline.stages import Stage, StageContext

# Seconds per unit measured on the default model with 2 CPU threads (see the README), for the
# time-left estimate before any stage has run; the display corrects them by measured times.
LOAD_S = 15.0  # loading the default model (conversion on first use comes on top, about a minute)
STEP_S = {"ppo": 25.0, "grpo": 25.0, "dpo": 9.0}  # rough seconds per training step on the default model, 2 threads
_REFERENCE_SAMPLES: dict = {}  # eval_stage's memo of the starting policy's samples (one entry)


def _jsonl(path: Path, rows) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def _threads(cfg: PipelineConfig) -> None:
    if cfg.run.threads:
        import torch

        torch.set_num_threads(cfg.run.threads)


def _progress() -> bool:
    return sys.stderr.isatty()


# ---- stages -------------------------------------------------------------------------------------


def prompts_stage(cfg: PipelineConfig, ctx: StageContext) -> dict:
    """train.jsonl and heldout.jsonl: the online trainers' own split (same path, count and seed)."""
    from tether.feedback.sample import prompt_value
    from tether.trainers.online.config import PromptDataConfig
    from tether.trainers.online.rollout import load_prompts

    train, held_out = load_prompts(PromptDataConfig(path=cfg.data.prompts, eval_prompts=cfg.data.eval_prompts, split_seed=cfg.data.split_seed))
    if not held_out:
        raise ValueError(f"data.eval_prompts={cfg.data.eval_prompts}: the pipeline needs held-out prompts to evaluate on")
    _jsonl(ctx.out / "train.jsonl", [{"prompt": prompt_value(p)} for p in train])
    _jsonl(ctx.out / "heldout.jsonl", [{"prompt": prompt_value(p)} for p in held_out])
    return {"train": len(train), "held_out": len(held_out)}


def sample_stage(cfg: PipelineConfig, ctx: StageContext) -> dict:
    from tether.feedback.sample import SampleSettings, prompt_messages, sample_file
    from tether.models import load_model

    _threads(cfg)
    prompts = [prompt_messages(r["prompt"]) for r in _read_jsonl(ctx.inputs["prompts"].dir / "train.jsonl")]
    ctx.report(f"loading {cfg.model.name_or_path} (converted on first use)")
    model, tokenizer = load_model(cfg.model.name_or_path, trust_remote_code=cfg.model.trust_remote_code)
    s = cfg.sample
    settings = SampleSettings(temperature=s.temperature, max_new_tokens=s.max_new_tokens, seed=s.seed)
    budget_s = s.max_minutes * 60 if s.max_minutes is not None else None
    report = sample_file(
        model, tokenizer, prompts, ctx.out / "samples.jsonl", k=s.k, settings=settings, batch_size=s.batch_size, model_name=cfg.model.name_or_path, max_seconds=budget_s
    )
    sampled = report.resumed + report.written  # the rows in samples.jsonl (a stage starts empty, so resumed is 0 here)
    if sampled < report.prompts:
        ctx.report(
            f"warning: sample.max_minutes={s.max_minutes} ran out after {sampled} of {report.prompts} training prompts "
            f"({report.seconds:.0f} s); the other {report.prompts - sampled} get no candidates (sample.max_minutes=null samples them all)"
        )
    return {"prompts": sampled, "unsampled_prompts": report.prompts - sampled, "completions": sampled * s.k}


def _gold_gaps(gold, prompts: list[str], first: list[str], second: list[str]) -> list[float]:
    """g(first) - g(second) per pair: an annotator at temperature 0 is the gold function itself."""
    from tether.feedback.simulated import SimulatedAnnotator

    return SimulatedAnnotator(gold, 0.0).gaps(prompts, first, second).tolist() if prompts else []


def label_stage(cfg: PipelineConfig, ctx: StageContext) -> dict:
    """pairs.jsonl (noisy annotators, training prompts) and heldout_pairs.jsonl (gold labels, held-out
    training prompts), both keeping only pairs with a gold gap of at least feedback.min_gap."""
    from tether.feedback.sample import load_sample_rows, prompt_text, sample_pairs
    from tether.feedback.simulated import annotator_pool, label_samples, load_gold

    f = cfg.feedback
    rows = load_sample_rows(ctx.inputs["sample"].dir / "samples.jsonl")
    empty = sum(not c.strip() for r in rows for c in r["completions"])
    if empty:  # a reply that is only a stop token: no pair file takes an empty completion
        ctx.report(f"dropped {empty} empty candidates")
        rows = [r | {"completions": [c for c in r["completions"] if c.strip()]} for r in rows]
    order = list(range(len(rows)))
    random.Random(f.seed).shuffle(order)
    n_eval = round(len(rows) * f.rm_eval_fraction)
    eval_rows = [rows[i] for i in sorted(order[:n_eval])]
    train_rows = [rows[i] for i in sorted(order[n_eval:])]
    gold = load_gold(f.gold)
    pool = annotator_pool(gold, f.annotator_temperatures, seed=f.seed)
    labelled, counts = label_samples(train_rows, pool, kind="pairs", per_item=f.per_item, max_pairs_per_prompt=f.max_pairs_per_prompt, seed=f.seed)
    pairs = [r for r in labelled if abs(r["gold_gap"]) >= f.min_gap]
    if not pairs:
        raise ValueError(f"feedback.min_gap={f.min_gap}: no labelled pair has a gold gap that large; lower it or sample more candidates")
    _jsonl(ctx.out / "pairs.jsonl", pairs)
    candidates = sample_pairs(eval_rows, f.max_pairs_per_prompt, f.seed)
    gaps = _gold_gaps(gold, [prompt_text(p) for p, _, _ in candidates], [a for _, a, _ in candidates], [b for _, _, b in candidates])
    held = [{"prompt": p, "chosen": a if g > 0 else b, "rejected": b if g > 0 else a, "gold_gap": abs(g)} for (p, a, b), g in zip(candidates, gaps) if abs(g) >= f.min_gap]
    _jsonl(ctx.out / "heldout_pairs.jsonl", held)
    flipped = sum(r["gold_gap"] < 0 for r in pairs)
    ctx.report(f"{len(pairs)} training pairs ({flipped} against the gold order), {len(held)} held-out gold pairs; dropped {len(labelled) - len(pairs)} with a gold gap under {f.min_gap}")
    return {"pairs": len(pairs), "flipped": flipped, "heldout_pairs": len(held), "labels": counts["labels"], "ties": counts["ties"], "dropped_small_gap": len(labelled) - len(pairs), "dropped_empty": empty}


def _common(cfg: PipelineConfig, out: Path) -> list[str]:
    model = [f"model.{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in asdict(cfg.model).items()]  # every model key reaches every trainer
    return model + [f"train.output_dir={out}", f"train.progress={str(_progress()).lower()}"] + ([f"train.threads={cfg.run.threads}"] if cfg.run.threads else [])


def rm_stage(cfg: PipelineConfig, ctx: StageContext) -> dict:
    """A LoRA reward model on pairs.jsonl; then its accuracy and calibration on the held-out gold pairs."""
    import torch

    from tether.config import load_config
    from tether.evaluate.reward_metrics import calibration_bins, reward_model_report
    from tether.rollout.rewards import load_reward_source
    from tether.trainers.rm import RMConfig, run_rm_train

    _threads(cfg)
    r = cfg.rm
    labels = ctx.inputs["label"].dir
    overrides = _common(cfg, ctx.out / "run") + [
        "lora.enabled=true", f"lora.r={r.lora_r}", f"lora.alpha={2 * r.lora_r}", f"data.path={labels / 'pairs.jsonl'}", "data.eval_fraction=0",
        f"train.lr={r.lr}", f"train.max_steps={r.steps}", f"train.batch_size={r.batch_size}", f"train.micro_batch_size={r.batch_size}",
        "train.save_every=0", f"rm.pooling={r.pooling}", f"rm.layers={r.layers}",
    ] + budget_overrides(r) + list(r.extra)
    run_rm_train(load_config(RMConfig, None, overrides))
    model_dir = ctx.out / "run" / "model"
    held = _read_jsonl(labels / "heldout_pairs.jsonl")
    result: dict = {"model": str(model_dir.relative_to(ctx.out))}
    if not held:
        ctx.report("warning: no held-out gold pairs; the reward model's accuracy is not measured")
        return result
    source = load_reward_source(str(model_dir))
    prompts = [p["prompt"] for p in held]
    scores = source.score(prompts * 2, [p["chosen"] for p in held] + [p["rejected"] for p in held])["reward"].double()  # [2N]
    chosen, rejected = scores[: len(held)], scores[len(held) :]  # [N], [N]
    words = lambda key: torch.tensor([float(len(p[key].split())) for p in held])
    report = reward_model_report(chosen, rejected, words("chosen"), words("rejected"))
    report["bins"] = calibration_bins(chosen, rejected)
    (ctx.out / "heldout_eval.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    ctx.report(f"reward model: accuracy {report['accuracy']:.3f} on {len(held)} held-out gold pairs (the longer reply wins {report['length_baseline_accuracy']:.3f})")
    return result | {"accuracy": report["accuracy"], "ece": report["ece"], "pairs": len(held)}


def budget_overrides(m: PipelineMethod | PipelineRM) -> list[str]:
    """The stage's time budget as the trainer's ``train.max_minutes``, null included: the trainers'
    own presets (``grpo_vader.yaml`` ...) set a budget of their own, which ``max_minutes: null``
    ("steps alone bound it") must replace, not leave in force."""
    return [f"train.max_minutes={m.max_minutes if m.max_minutes is not None else 'null'}"]


def online_stage(cfg: PipelineConfig, method: str, kl: float, ctx: StageContext) -> dict:
    """PPO or GRPO on the learned reward model, the gold reward logged beside it (reward.gold)."""
    from tether.config import load_config

    _threads(cfg)
    m = getattr(cfg, method)
    rm_dir = ctx.inputs["rm"].dir / ctx.inputs["rm"].result["model"]
    overrides = _common(cfg, ctx.out / "run") + [
        f"data.path={cfg.data.prompts}", f"data.eval_prompts={cfg.data.eval_prompts}", f"data.split_seed={cfg.data.split_seed}",
        "data.eval_samples=0",  # the eval stage measures the held-out prompts, with intervals
        f"sampling.max_new_tokens={cfg.sample.max_new_tokens}", f"reward.source={rm_dir}", f"reward.gold={cfg.feedback.gold}",
        f"kl.coef={kl}", f"train.lr={m.lr}", f"train.max_steps={m.steps}", "train.save_every=0",
    ] + budget_overrides(m) + list(m.extra)
    if method == "ppo":
        from tether.trainers.ppo import PPOConfig, run_ppo

        summary = run_ppo(load_config(PPOConfig, "ppo_vader", overrides))
    else:
        from tether.trainers.grpo import GRPOConfig, run_grpo

        summary = run_grpo(load_config(GRPOConfig, "grpo_vader", overrides))
    warnings = summary.get("monitor_warnings") or []
    for w in warnings:
        ctx.report(f"monitor: {w.get('name')} at step {w.get('step')}: {w.get('message')}")
    return {"model": "run/model", "kl_strength": kl, "steps": summary.get("steps"), "warnings": len(warnings)}


def dpo_stage(cfg: PipelineConfig, kl: float, ctx: StageContext) -> dict:
    """DPO (LoRA) on the annotators' pairs; kl is dpo.beta."""
    from tether.config import DPOConfig, load_config
    from tether.trainers.dpo import run_dpo

    _threads(cfg)
    m = cfg.dpo
    overrides = _common(cfg, ctx.out / "run") + [
        "lora.enabled=true", "lora.r=16", "lora.alpha=32", f"data.path={ctx.inputs['label'].dir / 'pairs.jsonl'}", "data.eval_fraction=0",
        f"train.lr={m.lr}", f"train.max_steps={m.steps}", "train.batch_size=8", "train.micro_batch_size=8", "train.save_every=0",
        "train.sample_prompts=[]", f"dpo.beta={kl}",
    ] + budget_overrides(m) + list(m.extra)
    run_dpo(load_config(DPOConfig, None, overrides))
    return {"model": "run/model", "kl_strength": kl}


def eval_stage(cfg: PipelineConfig, trained: str, ctx: StageContext) -> dict:
    """The trained policy against the starting model on the held-out prompts (tether eval's computation)."""
    from tether.evaluate.policy import (
        EvalSettings,
        evaluate_policy,
        sample_reference,
        summary_metrics,
        write_eval,
    )
    from tether.feedback.judges import load_judge
    from tether.feedback.sample import prompt_messages
    from tether.feedback.simulated import load_gold
    from tether.models import load_model
    from tether.rollout.engine import SamplingParams
    from tether.rollout.rewards import load_reward_source

    _threads(cfg)
    run = ctx.inputs[trained]
    prompts = [prompt_messages(r["prompt"]) for r in _read_jsonl(ctx.inputs["prompts"].dir / "heldout.jsonl")]
    rm = ctx.inputs["rm"]
    policy, tokenizer = load_model(str(run.dir / run.result["model"]), trust_remote_code=cfg.model.trust_remote_code)
    reference, ref_tokenizer = load_model(cfg.model.name_or_path, trust_remote_code=cfg.model.trust_remote_code)
    e = cfg.eval
    settings = EvalSettings(
        sampling=SamplingParams(max_new_tokens=e.max_new_tokens, temperature=e.temperature), samples_per_prompt=e.samples_per_prompt,
        seed=e.seed, bootstrap_rounds=e.bootstrap_rounds,
    )
    sources = {"gold": load_gold(cfg.feedback.gold), "proxy": load_reward_source(str(rm.dir / rm.result["model"]))}
    # Every eval stage samples the same reference on the same prompts with the same seed: draw it
    # once per process (keyed by what it depends on) and let each policy's evaluation reuse it.
    key = (ctx.inputs["prompts"].key, rm.key, json.dumps(asdict(e), sort_keys=True), cfg.model.name_or_path)
    if key not in _REFERENCE_SAMPLES:
        _REFERENCE_SAMPLES.clear()
        _REFERENCE_SAMPLES[key] = sample_reference(reference, ref_tokenizer, prompts, sources, settings)
    else:
        ctx.report("reusing the starting policy's samples drawn for an earlier eval stage")
    result = evaluate_policy(
        policy, tokenizer, prompts, reference=reference, reference_tokenizer=ref_tokenizer, reward_sources=sources,
        judges={"gold": load_judge(cfg.feedback.gold)}, settings=settings, reference_samples=_REFERENCE_SAMPLES[key],
    )
    write_eval(result, ctx.out)
    figures = summary_metrics(result, prefix="")
    ctx.report(", ".join(f"{k} {v:.3f}" for k, v in figures.items()))
    return figures


# ---- the stage list -----------------------------------------------------------------------------


def kl_strengths(cfg: PipelineConfig, method: str) -> list[float]:
    """The KL strengths a method trains at: its default, and with run.sweep its sweep list too."""
    m = getattr(cfg, method)
    values = [m.kl] + (list(m.sweep) if cfg.run.sweep else [])
    return sorted(dict.fromkeys(values))


def run_name(cfg: PipelineConfig, method: str, kl: float) -> str:
    """``ppo`` for the default strength (so a sweep reuses the plain run), ``ppo-kl0.01`` otherwise."""
    return method if kl == getattr(cfg, method).kl else f"{method}-kl{kl:g}"


def _prompt_count(cfg: PipelineConfig) -> int:
    from tether.data import load_records

    try:
        return len(load_records(cfg.data.prompts, kind="prompt").records)
    except Exception as error:  # the prompts stage reports a bad file properly; the estimate only needs a guess
        print(f"warning: could not count the prompts of {cfg.data.prompts} for the time estimate ({error}); assuming 240")
        return 240


def _bounded(overhead_s: float, work_s: float, max_minutes: float | None) -> tuple[float, float]:
    """(estimated seconds, the part of them a time budget fixes) of a stage that spends overhead_s
    loading and work_s in a loop bounded by max_minutes: the whole budget is fixed when the work
    would outlast it (the loop stops on time, however fast the machine), else nothing is."""
    budget = (max_minutes or 0.0) * 60
    if budget and work_s >= budget:
        return overhead_s + budget, budget
    return overhead_s + work_s, 0.0


def stage_times(cfg: PipelineConfig) -> dict[str, tuple[float, float]]:
    """Rough (seconds, seconds fixed by a time budget) per stage on the default model and 2 CPU
    threads; the display scales the unfixed part by the measured speed.

    Unit costs measured on a quiet run of the bundled experiment (README): 0.007 s per sampled
    token at 64 replies a batch; about 0.13 s per reward-model pair with 6 of 30 layers (a fixed
    0.03 s plus 0.5 s scaled by the share of layers kept, rm.layers); STEP_S per training step;
    0.35 s per evaluation reply (the starting policy's replies are drawn once)."""
    train_prompts = max(1, _prompt_count(cfg) - cfg.data.eval_prompts)
    share = cfg.rm.layers / 30 if cfg.rm.layers else 1.0  # the default model has 30 decoder layers
    method = lambda name, overhead: _bounded(overhead, getattr(cfg, name).steps * STEP_S[name], getattr(cfg, name).max_minutes)
    return {
        "prompts": (1.0, 0.0),
        "sample": _bounded(LOAD_S, train_prompts * cfg.sample.k * cfg.sample.max_new_tokens * 0.007, cfg.sample.max_minutes),
        "label": (3.0, 0.0),
        "rm": _bounded(LOAD_S, cfg.rm.steps * cfg.rm.batch_size * (0.03 + 0.5 * share), cfg.rm.max_minutes),
        "ppo": method("ppo", 20.0),
        "grpo": method("grpo", 20.0),
        "dpo": method("dpo", LOAD_S),
        "eval": (2 * LOAD_S + cfg.data.eval_prompts * cfg.eval.samples_per_prompt * 0.35, 0.0),
    }


def build_stages(cfg: PipelineConfig) -> tuple[list[Stage], list[tuple[str, str, float]]]:
    """The stages in order, and the trained runs as (stage name, method, KL strength)."""
    from functools import partial

    times = stage_times(cfg)
    timed = lambda kind: {"estimate_s": times[kind][0], "budget_s": times[kind][1]}
    model = asdict(cfg.model)
    data, sample, feedback = asdict(cfg.data), asdict(cfg.sample), asdict(cfg.feedback)
    stages = [
        Stage("prompts", partial(prompts_stage, cfg), {"data": data}, **timed("prompts")),
        Stage("sample", partial(sample_stage, cfg), {"model": model, "sample": sample}, reads=("prompts",), **timed("sample")),
        Stage("label", partial(label_stage, cfg), {"feedback": feedback}, reads=("sample",), **timed("label"), version="2"),
        Stage("rm", partial(rm_stage, cfg), {"rm": asdict(cfg.rm), "threads": cfg.run.threads}, reads=("label",), **timed("rm")),
    ]
    runs: list[tuple[str, str, float]] = []
    for method in METHODS:
        m = getattr(cfg, method)
        if not m.enabled:
            continue
        settings = {"method": {k: v for k, v in asdict(m).items() if k not in ("kl", "sweep")}, "threads": cfg.run.threads}
        for kl in kl_strengths(cfg, method):
            name = run_name(cfg, method, kl)
            if method == "dpo":
                stages.append(Stage(name, partial(dpo_stage, cfg, kl), settings | {"kl": kl}, reads=("label",), **timed("dpo")))
            else:
                online = settings | {"kl": kl, "max_new_tokens": cfg.sample.max_new_tokens}
                stages.append(Stage(name, partial(online_stage, cfg, method, kl), online, reads=("prompts", "rm"), **timed(method)))
            runs.append((name, method, kl))
    if not runs:
        raise ValueError("every method is disabled (ppo.enabled, grpo.enabled, dpo.enabled): nothing to train")
    evaluated = {k: v for k, v in asdict(cfg.eval).items() if k not in ("report_samples", "smooth")}  # those two only shape the report
    for name, _, _ in runs:
        stages.append(Stage(f"eval-{name}", partial(eval_stage, cfg, name), {"eval": evaluated, "gold": cfg.feedback.gold}, reads=("prompts", "rm", name), **timed("eval")))
    return stages, runs


__all__ = ["build_stages", "kl_strengths", "run_name", "stage_times"]
