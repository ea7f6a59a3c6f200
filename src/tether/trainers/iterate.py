"""Iterative DPO (``tether iterate``): rounds of sample → label → DPO → held-out evaluation.

Round k (1-based) keeps everything under ``<train.output_dir>/round_<k>/``:

* ``samples.jsonl``: ``iterate.samples_per_prompt`` replies to each of the round's prompts from
  the round's starting policy (the initial model for round 1, ``round_<k-1>/dpo/model`` after),
  written by ``tether.feedback.sample.sample_file`` (resumable, seeded per completion);
* ``pairs.jsonl``: every two distinct replies of a prompt, labelled by ``iterate.labeller``: a
  ``tether eval --judge`` spec (vader, module:function, a reward model, a preference model), a
  reward-model ensemble with ``iterate.uncertainty`` (pairs weighted or dropped by the members'
  confidence, ``tether.feedback.uncertainty``), ``simulated`` (``tether.feedback.simulated``
  annotators on ``iterate.gold``), or ``annotations``: people's labels, the pairs JSONL that
  ``tether annotate export`` wrote for the round (``iterate.annotations``, ``{round}`` replaced);
* ``dpo/``: ``run_dpo`` from the starting policy on ``pairs.jsonl`` (``dpo/model`` the result),
  with its checkpoints, so a killed round resumes at its step (the DPO trainer's own exact resume);
* ``eval.json``: the round's policy against the initial policy on held-out prompts
  (``evaluate_policy``: win-rate under ``iterate.eval_judge`` with a paired-bootstrap interval);
* ``done.json``: written last; a round that has it is never redone.

``iterate.reference``: ``previous`` (the round's starting policy is DPO's reference, the usual
iterative DPO) or ``initial`` (every round is pulled towards the initial model).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from tether.config import DataConfig, LoRAConfig, ModelConfig, PreferenceConfig, TrainConfig, opt


@dataclass
class IterateSection:
    rounds: int = opt(2, "Rounds of sample -> label -> DPO -> evaluate.")
    prompts: str = opt("bundled:review_prompts", "Prompts: any file tether reads as prompt records, or bundled:<name>.")
    prompts_per_round: int = opt(32, "Training prompts sampled per round: round k takes the next slice of the (held-out-free) prompt list, wrapping around.")
    samples_per_prompt: int = opt(2, "Replies sampled per prompt; every two distinct replies of a prompt make a pair to label.")
    max_pairs_per_prompt: int = opt(0, "At most this many pairs per prompt (a seeded pick; 0: all of them).")
    labeller: str = opt("vader", "Who labels the pairs: a `tether eval --judge` spec (vader, module:function, a reward model / ensemble directory, a preference model directory), 'simulated' (annotators on iterate.gold) or 'annotations' (people: the pairs file iterate.annotations).")
    judge_temperature: float = opt(0.0, "Judges built on a reward: 0 gives hard verdicts (ties dropped), T > 0 gives sigmoid((r - r') / T).")
    gold: str = opt("vader", "labeller=simulated: the gold reward the annotators see (tether.feedback.simulated.load_gold spec).")
    annotator_temperatures: list[float] = opt([0.0], "labeller=simulated: one annotator per temperature (0: always prefers the higher gold reward).")
    annotations: str = opt("", "labeller=annotations: the pairs JSONL `tether annotate export` wrote, '{round}' replaced by the round number. A missing file stops the run, which resumes at that round once it exists.")
    uncertainty: str = opt("off", "With a reward-model ensemble directory as labeller: 'drop' drops pairs whose mean member gap is within uncertainty_k spreads of 0 (tether.feedback.uncertainty); 'weight' is online-only for now and refused here.")
    uncertainty_k: float = opt(1.0, "uncertainty=drop: keep a pair only if |mean gap| > k * std of the members' gaps.")
    uncertainty_temperature: float = opt(1.0, "Temperature T of each member's preference probability sigmoid(gap / T).")
    reference: str = opt("previous", "DPO's reference in round k: 'previous' (the round's starting policy) or 'initial' (the initial model, every round).")
    eval_judge: str = opt("", "Judge of the held-out win-rate against the initial policy ('' : the labeller when it is a judge spec, else iterate.gold).")
    eval_prompts: int = opt(16, "Prompts held out (a seeded pick) for the per-round evaluation; 0 disables it.")
    eval_samples: int = opt(2, "Replies per held-out prompt from each policy.")
    eval_bootstrap: int = opt(1000, "Rounds of the paired bootstrap over held-out prompts (0: no interval).")
    split_seed: int = opt(1234, "Seed of the held-out pick.")


@dataclass
class IterateSampling:
    max_new_tokens: int = opt(48, "Tokens per reply at most (sampling and evaluation).")
    temperature: float = opt(1.0, "Sampling temperature.")
    top_p: float = opt(1.0, "Nucleus sampling threshold (1.0: off).")
    top_k: int = opt(0, "Sample from the k most likely tokens only (0: off).")
    seed: int = opt(0, "Seed of the replies; round k samples with seed·1000 + k, so rounds differ and a rerun is identical.")
    batch_size: int = opt(8, "Prompts per generation batch.")


@dataclass
class IterateConfig:
    """Iterative DPO: rounds of sampling from the current policy, labelling, DPO and evaluation."""

    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    # data.path is set per round (round_<k>/pairs.jsonl); the other keys apply to every round's DPO.
    data: DataConfig = field(default_factory=lambda: DataConfig(path="auto", pack=True, eval_fraction=0.0))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(output_dir="runs/iterate", lr=5e-6, batch_size=8, micro_batch_size=4, save_every=10, sample_prompts=[]))
    dpo: PreferenceConfig = field(default_factory=PreferenceConfig)
    sampling: IterateSampling = field(default_factory=IterateSampling)
    iterate: IterateSection = field(default_factory=IterateSection)


def _check(cfg: IterateConfig) -> None:
    from tether.feedback.uncertainty import RULES
    from tether.losses.preference import spec_of

    it = cfg.iterate
    if spec_of(cfg.dpo.loss).data != "paired":
        raise ValueError(f"iterate labels pairs; dpo.loss={cfg.dpo.loss} learns from {spec_of(cfg.dpo.loss).data} data")
    if it.rounds < 1 or it.prompts_per_round < 1 or it.samples_per_prompt < 2:
        raise ValueError("iterate.rounds and iterate.prompts_per_round must be >= 1, iterate.samples_per_prompt >= 2")
    if it.reference not in ("previous", "initial"):
        raise ValueError(f"iterate.reference must be 'previous' or 'initial', got {it.reference!r}")
    if it.uncertainty not in RULES:
        raise ValueError(f"iterate.uncertainty must be one of {RULES}, got {it.uncertainty!r}")
    if it.uncertainty == "weight":
        raise ValueError("iterate.uncertainty=weight: the offline DPO trainer takes no per-pair weights yet; use 'drop' here, or 'weight' in online DPO (online.uncertainty)")
    if it.uncertainty != "off" and it.labeller in ("simulated", "annotations"):
        raise ValueError(f"iterate.uncertainty={it.uncertainty} needs a reward-model ensemble directory as iterate.labeller, got {it.labeller!r}")
    if it.labeller == "annotations" and "{round}" not in it.annotations and it.rounds > 1:
        raise ValueError("iterate.annotations must contain '{round}' when there is more than one round (each round labels new samples)")
    if cfg.data.path != "auto":
        raise ValueError(f"data.path={cfg.data.path!r} does not apply to iterate: each round trains on its own round_<k>/pairs.jsonl (set iterate.prompts)")
    if it.reference == "initial" and not spec_of(cfg.dpo.loss).needs_reference:
        raise ValueError(f"iterate.reference=initial does not apply: dpo.loss={cfg.dpo.loss} takes no reference")


def split_prompts(cfg: IterateConfig) -> tuple[list, list]:
    """(training prompts, held-out prompts) as chat messages: a seeded pick of ``eval_prompts``."""
    import random

    from tether.data import load_records

    it = cfg.iterate
    prompts = [r.prompt for r in load_records(it.prompts, kind="prompt").records]
    order = list(range(len(prompts)))
    random.Random(it.split_seed).shuffle(order)
    held = set(order[: it.eval_prompts])
    train = [p for i, p in enumerate(prompts) if i not in held]
    if not train:
        raise ValueError(f"iterate.prompts={it.prompts}: no prompts left for training after holding out {it.eval_prompts}")
    return train, [prompts[i] for i in sorted(held)]


def round_prompts(train: list, k: int, n: int) -> list:
    """Round k's (1-based) slice of ``n`` training prompts, wrapping around the list."""
    start = (k - 1) * n
    return [train[(start + i) % len(train)] for i in range(n)]


def _load(cfg: IterateConfig, name: str):
    """A model for sampling or evaluation, loaded as the DPO trainer loads it (same seeded init for 'tiny')."""
    from tether.trainers.common import load_trainable_model

    return load_trainable_model(dataclasses.replace(cfg.model, name_or_path=name), dataclasses.replace(cfg.lora, enabled=False), cfg.train.seed)


def _settings(cfg: IterateConfig, k: int):
    from tether.feedback.sample import SampleSettings

    s = cfg.sampling
    return SampleSettings(temperature=s.temperature, top_p=s.top_p, top_k=s.top_k, max_new_tokens=s.max_new_tokens, seed=s.seed * 1000 + k)


def label_round(cfg: IterateConfig, k: int, rows: list[dict], judge) -> tuple[list[dict], dict]:
    """Labelled pairs ``{prompt, chosen, rejected, ...}`` for a round's sample rows, and counts."""
    import torch

    from tether.feedback.sample import prompt_text, sample_pairs

    it = cfg.iterate
    if it.labeller == "annotations":
        from tether.data import load_records

        path = Path(it.annotations.replace("{round}", str(k)))
        if not path.is_file():
            raise FileNotFoundError(
                f"round {k}: iterate.annotations file {path} does not exist; label round_{k}/samples.jsonl (tether annotate), export the pairs there "
                "(tether annotate export) and rerun with train.resume=true"
            )
        n = len(load_records(str(path), kind="preference").records)  # validates every row now, naming the bad one
        with open(path, encoding="utf-8") as f:
            out = [json.loads(line) for line in f if line.strip()]
        return out, {"pairs": n, "source": str(path)}
    if it.labeller == "simulated":
        from tether.feedback.simulated import annotator_pool, label_samples, load_gold

        pool = annotator_pool(load_gold(it.gold), it.annotator_temperatures, seed=cfg.sampling.seed * 1000 + k)
        return label_samples(rows, pool, max_pairs_per_prompt=it.max_pairs_per_prompt or None, seed=k)
    items = sample_pairs(rows, it.max_pairs_per_prompt or None, seed=k)
    if not items:
        return [], {"pairs": 0}
    texts = [prompt_text(p) for p, _, _ in items]
    first, second = [a for _, a, _ in items], [b for _, _, b in items]
    counts: dict = {"items": len(items)}
    if it.uncertainty != "off":
        from tether.feedback.uncertainty import weight_metrics

        win, weights = judge.label(texts, first, second)  # [N], [N]
        counts.update(weight_metrics(weights))
    else:
        with torch.no_grad():
            win = judge(texts, first, second).float()  # [N]
        weights = (win != 0.5).float()  # [N]
    out = []
    for (prompt, a, b), p, w in zip(items, win.tolist(), weights.tolist()):
        if p == 0.5 or w == 0:
            continue
        chosen, rejected = (a, b) if p > 0.5 else (b, a)
        out.append({"prompt": prompt, "chosen": chosen, "rejected": rejected, "p_chosen": max(p, 1 - p)})
    counts["pairs"], counts["ties_or_dropped"] = len(out), len(items) - len(out)
    return out, counts


def _labeller(cfg: IterateConfig):
    it = cfg.iterate
    if it.labeller in ("simulated", "annotations"):
        return None
    if it.uncertainty != "off":
        from tether.feedback.uncertainty import EnsembleJudge

        return EnsembleJudge(it.labeller, it.uncertainty, it.uncertainty_k, it.uncertainty_temperature)
    from tether.trainers.judging import build_judge

    return build_judge(it.labeller, it.judge_temperature, None, "iterate.labeller")


def _eval_judge(cfg: IterateConfig, labeller):
    it = cfg.iterate
    if it.eval_judge:
        from tether.feedback.judges import load_judge

        return load_judge(it.eval_judge)
    if labeller is not None:
        return labeller
    from tether.feedback.judges import RewardJudge
    from tether.feedback.simulated import load_gold

    return RewardJudge(load_gold(it.gold), name=it.gold)  # the gold the simulated annotators see, hard verdicts


def evaluate_round(cfg: IterateConfig, policy, tokenizer, initial, prompts: list, judge) -> dict:
    """The round's policy against the initial one on the held-out prompts: win-rate (ties as
    halves) under ``judge`` with its paired-bootstrap interval over prompts, through ``evaluate_policy``."""
    from tether.evaluate.policy import EvalSettings, evaluate_policy
    from tether.rollout.engine import SamplingParams

    it, s = cfg.iterate, cfg.sampling
    params = SamplingParams(max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k)
    settings = EvalSettings(sampling=params, samples_per_prompt=it.eval_samples, seed=it.split_seed * 7 + 1, bootstrap_rounds=it.eval_bootstrap, bootstrap_seed=cfg.train.seed, chunk_size=cfg.model.chunk_size)
    policy.eval()
    report = evaluate_policy(policy, tokenizer, prompts, reference=initial, judges={"judge": judge}, settings=settings)["win_rates"]["judge"]
    out = {"win_rate_vs_initial": report["win_rate"], "n": report["n"]}
    if "win_rate_ci" in report:
        out["win_rate_ci"] = list(report["win_rate_ci"])
    return out


def run_iterate(cfg: IterateConfig, judge=None) -> dict:
    """Run (or resume) the rounds; returns ``{"rounds": [per-round summaries], "model": final model dir}``.
    ``judge`` (a PairJudge) overrides ``iterate.labeller`` when it names a judge."""
    from tether.config import DPOConfig, save_yaml
    from tether.feedback.sample import sample_file, write_jsonl
    from tether.trainers.dpo import run_dpo

    _check(cfg)
    it = cfg.iterate
    out = Path(cfg.train.output_dir)
    if not cfg.train.resume and any(out.glob("round_*")):
        raise ValueError(f"{out} holds rounds of an earlier run; train.resume=true continues it (finished rounds are kept), or choose another train.output_dir")
    out.mkdir(parents=True, exist_ok=True)
    save_yaml(cfg, out / "config.yaml")
    train_prompts, held_out = split_prompts(cfg)
    labeller = judge if judge is not None else _labeller(cfg)
    initial_name = cfg.model.name_or_path
    summaries = []
    for k in range(1, it.rounds + 1):
        rd = out / f"round_{k}"
        start_name = initial_name if k == 1 else str(out / f"round_{k - 1}" / "dpo" / "model")
        if (rd / "done.json").is_file():
            summaries.append(json.loads((rd / "done.json").read_text()))
            print(f"iterate: round {k} already done ({rd / 'done.json'}); skipped")
            continue
        started = time.time()
        rd.mkdir(parents=True, exist_ok=True)
        pairs_path = rd / "pairs.jsonl"
        if not pairs_path.is_file():  # labelling is written atomically: present means complete
            model, tokenizer = _load(cfg, start_name)
            report = sample_file(
                model, tokenizer, round_prompts(train_prompts, k, it.prompts_per_round), rd / "samples.jsonl",
                k=it.samples_per_prompt, settings=_settings(cfg, k), batch_size=cfg.sampling.batch_size, model_name=start_name, progress=cfg.train.progress,
            )
            print(f"iterate: round {k}: {report.resumed + report.written} prompts sampled ({report.resumed} resumed) from {start_name}")
            del model
            from tether.feedback.sample import read_sample_rows

            pairs, counts = label_round(cfg, k, read_sample_rows(rd / "samples.jsonl"), labeller)
            if not pairs:
                raise ValueError(f"round {k}: the labeller left no pairs ({counts}); nothing to train on (more prompts or samples_per_prompt, or another labeller)")
            (rd / "label.json").write_text(json.dumps(counts, indent=2))
            write_jsonl(pairs_path, pairs)
            print(f"iterate: round {k}: {len(pairs)} labelled pairs ({counts})")
        dpo_cfg = DPOConfig(
            model=dataclasses.replace(cfg.model, name_or_path=start_name),
            lora=cfg.lora,
            data=dataclasses.replace(cfg.data, path=str(pairs_path)),
            train=dataclasses.replace(cfg.train, output_dir=str(rd / "dpo"), resume=(rd / "dpo" / "checkpoints").is_dir()),  # the round's own DPO resumes at its step
            dpo=dataclasses.replace(cfg.dpo, reference="copy") if it.reference == "initial" else cfg.dpo,
        )
        reference_model = _load(cfg, initial_name)[0] if it.reference == "initial" and k > 1 else None
        run_dpo(dpo_cfg, reference_model=reference_model)
        del reference_model
        summary: dict = {"round": k, "start": start_name, "model": str(rd / "dpo" / "model"), "pairs": str(pairs_path), "seconds": None}
        if held_out and it.eval_prompts > 0 and it.eval_samples > 0:
            policy, tokenizer = _load(cfg, str(rd / "dpo" / "model"))
            initial, _ = _load(cfg, initial_name)
            summary["eval"] = evaluate_round(cfg, policy, tokenizer, initial, held_out, _eval_judge(cfg, labeller))
            (rd / "eval.json").write_text(json.dumps(summary["eval"], indent=2))
            ci = summary["eval"].get("win_rate_ci")
            print(f"iterate: round {k}: held-out win-rate vs the initial policy {summary['eval']['win_rate_vs_initial']:.3f}" + (f" (95% CI {ci[0]:.3f}-{ci[1]:.3f})" if ci else ""))
        summary["seconds"] = round(time.time() - started, 1)  # this session's time on the round (a resumed round counts only its last part)
        (rd / "done.json").write_text(json.dumps(summary, indent=2))
        summaries.append(summary)
    result = {"rounds": summaries, "model": summaries[-1]["model"]}
    (out / "summary.json").write_text(json.dumps(result, indent=2))
    print(f"iterate: {it.rounds} rounds done; final policy {result['model']}")
    return result


__all__ = ["IterateConfig", "IterateSampling", "IterateSection", "evaluate_round", "label_round", "round_prompts", "run_iterate", "split_prompts"]
