"""Online RL throughput: tether's GRPO trainer vs Hugging Face TRL's GRPOTrainer, CPU fp32.

    flock /tmp/tether-heavy.lock .venv/bin/python bench/online.py --rounds 3 --warmup 1 --steps 3

Both sides train the default model (SmolLM2-135M-Instruct, loaded with
``tether.models.load_model("default")``, all weights trained, no LoRA) on the bundled review
prompts with the VADER sentiment of the reply as the reward, GRPO with a KL term to a frozen
copy of the starting model. Figures: completions (samples) per second over ``--steps`` optimizer
steps after ``--warmup`` warm-up steps, and peak RSS of the process. The tether side also
reports its time split per step (generation, scoring, reference log-probs, update).

How the settings were matched (TRL 1.16 ``GRPOConfig`` field = tether ``GRPOConfig`` field):

* group size: ``num_generations=G`` = ``train.samples_per_prompt=G``;
* prompts per step: ``per_device_train_batch_size=P*G`` with ``gradient_accumulation_steps=1``
  (so ``steps_per_generation=1`` and ``generation_batch_size=P*G``: P prompts × G completions
  per generation, one generation per optimizer step) = ``train.prompts_per_step=P``;
* one optimisation step per rollout batch: ``num_iterations=1`` = ``train.epochs=1``,
  ``train.minibatch_size=0`` (whole batch). Neither side then runs an extra "old log-probs"
  forward pass: TRL takes the current log-probs detached (its generation and optimisation
  steps are aligned), tether the sampling log-probs of the rollout;
* completion length: ``max_completion_length=N`` plus ``generation_kwargs={"min_new_tokens": N}``
  = ``sampling.max_new_tokens=N`` with ``sampling.stop_at_eos=false``, so every completion
  on both sides is exactly N tokens (checked: tether's logged mean lengths, TRL's
  ``completion_ids`` as its reward function receives them);
* sampling: temperature 1, top_p 1, top_k 0 on both;
* loss: clipped surrogate (ε = 0.2) + β·k3 KL per token, token mean over the batch:
  ``beta=β, epsilon=0.2, loss_type="dapo"`` (normaliser: active tokens of the global batch, which
  here is the one batch) = ``kl.coef=β, grpo.clip_eps=0.2, kl.estimator=k3``; advantages
  standardised within the group: ``scale_rewards="group"`` = ``grpo.normalize_std=true``;
* reference: TRL builds a second copy of the model from the policy's config path when β > 0;
  tether ``kl.reference=copy`` deep-copies the loaded policy (at β = 0 neither side has one);
* optimiser: AdamW, same lr, weight decay 0, grad-norm clip 1.0, constant schedule, no warm-up;
* TRL at its fastest on this CPU: ``use_cpu=True``, ``bf16=False``, gradient checkpointing off,
  no logging/saving/eval inside the run (``report_to=[]``), no vLLM (transformers generate);
* prompts: the same prompts in the same order. tether draws them with its seeded step plan over
  all bundled prompts (``data.eval_prompts=0``, no held-out evaluation); TRL gets that stream as
  its dataset with ``shuffle_dataset=False``, so its RepeatSampler walks it in order.

Timed window, the same on both sides: from the end of optimizer step ``--warmup`` to the end of
the last step (tether: the step time stamps in ``metrics.jsonl``; TRL: an ``on_step_end``
callback). Time split per timed step: tether's own ``time/*`` metrics; for TRL the seconds
inside its ``_generate``, ``_calculate_rewards`` and reference-model log-prob calls (wrapped
around the trainer's methods), the rest of the step being the update and TRL's bookkeeping;
"other" on the tether side is the step time its phases leave out. Each side runs in its own subprocess (its peak RSS is its own), one at a time,
alternating within a round and swapping who goes first each round; medians over rounds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from harness import ROUNDS, print_summary, report, run_rounds, scratch_dir  # noqa: E402

SEED = 0
LR = 1e-6
CLIP_EPS = 0.2
SIDES = ("tether", "trl")


def _prompt_stream(args) -> list[list[dict]]:
    """The prompts of every optimizer step, in the order tether's trainer draws them."""
    from tether.trainers.common import StepPlan
    from tether.trainers.online import PromptDataConfig, load_prompts

    train, _ = load_prompts(PromptDataConfig(eval_prompts=0))
    plan = StepPlan(len(train), args.prompts, 1.0, args.warmup + args.steps, SEED)
    return [train[i] for s in range(args.warmup + args.steps) for i in plan.indices(s)]


def run_tether(args) -> dict:
    """tether's GRPO loop (``tether.trainers.grpo``) with the settings in the docstring."""
    import contextlib
    import io

    from tether.config import load_config
    from tether.trainers.grpo import GRPOConfig, run_grpo

    out = scratch_dir(prefix="bench-online-tether-")
    cfg = load_config(GRPOConfig, None, [
        f"model.name_or_path={args.model}", "lora.enabled=false", "kl.reference=copy", "kl.estimator=k3",
        f"kl.coef={args.beta}", f"grpo.clip_eps={CLIP_EPS}", "grpo.normalize_std=true",
        "data.path=bundled:review_prompts", "data.eval_prompts=0", "reward.source=vader",
        # Every completion runs the full length, as TRL's min_new_tokens does.
        f"sampling.max_new_tokens={args.new_tokens}", "sampling.stop_at_eos=false", "sampling.temperature=1.0", "sampling.top_p=1.0", "sampling.top_k=0",
        f"train.output_dir={out}", f"train.max_steps={args.warmup + args.steps}", f"train.prompts_per_step={args.prompts}",
        f"train.samples_per_prompt={args.group}", "train.epochs=1", "train.minibatch_size=0", f"train.lr={LR}",
        "train.weight_decay=0", "train.max_grad_norm=1.0", "train.min_lr_ratio=1.0", "train.warmup_ratio=0",
        "train.save_every=0", "train.progress=false", f"train.threads={args.threads}", f"train.seed={SEED}",
    ])
    with contextlib.redirect_stdout(io.StringIO()):
        run_grpo(cfg)
    rows = [r for r in map(json.loads, open(Path(out) / "metrics.jsonl")) if r.get("split", "train") == "train"]
    timed = rows[args.warmup :]
    lengths = {r["response/length"] for r in timed}
    if lengths != {float(args.new_tokens)}:
        raise RuntimeError(f"tether completions were not all {args.new_tokens} tokens: mean lengths {sorted(lengths)}")
    seconds = rows[-1]["time"] - rows[args.warmup - 1]["time"]
    split = {k.split("/", 1)[1]: statistics.mean(r[k] for r in timed) for k in timed[0] if k.startswith("time/")}
    split["other"] = seconds / args.steps - sum(split.values())
    return {"samples": args.steps * args.prompts * args.group, "seconds": seconds, "split": split,
            "reward": statistics.mean(r["reward/mean"] for r in rows)}


def run_trl(args) -> dict:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from tether.feedback.simulated import vader_gold
    from tether.models import load_model

    torch.set_num_threads(args.threads)
    torch.manual_seed(SEED)
    model, tokenizer = load_model(args.model)
    dataset = Dataset.from_dict({"prompt": _prompt_stream(args)})
    stamps: list[float] = []
    lengths: list[int] = []
    rewards: list[float] = []

    def vader(prompts, completions, **kw) -> list[float]:
        # Conversational prompts give completions as [{"role": "assistant", "content": ...}].
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        scores = [vader_gold(t) for t in texts]
        rewards.extend(scores)
        lengths.extend(len(ids) for ids in kw.get("completion_ids", []))
        return scores

    phases: dict[str, float] = {"generate": 0.0, "score": 0.0, "reference": 0.0}
    snapshots: list[dict[str, float]] = []

    class Clock(TrainerCallback):
        def on_step_end(self, *a, **k):
            stamps.append(time.perf_counter())
            snapshots.append(dict(phases))

    config = GRPOConfig(
        output_dir=scratch_dir(prefix="bench-online-trl-"), per_device_train_batch_size=args.prompts * args.group,
        gradient_accumulation_steps=1, num_generations=args.group, num_iterations=1, max_steps=args.warmup + args.steps,
        max_completion_length=args.new_tokens, generation_kwargs={"min_new_tokens": args.new_tokens},
        temperature=1.0, top_p=1.0, top_k=0, beta=args.beta, epsilon=CLIP_EPS, loss_type="dapo", scale_rewards="group",
        learning_rate=LR, weight_decay=0.0, max_grad_norm=1.0, lr_scheduler_type="constant", warmup_steps=0,
        bf16=False, fp16=False, gradient_checkpointing=False, use_cpu=True, use_vllm=False, shuffle_dataset=False,
        logging_strategy="no", save_strategy="no", eval_strategy="no", report_to=[], disable_tqdm=True,
        dataloader_num_workers=0, seed=SEED, log_completions=False,
    )
    trainer = GRPOTrainer(model=model, reward_funcs=vader, args=config, train_dataset=dataset, processing_class=tokenizer, callbacks=[Clock()])
    _time_trl_phases(trainer, phases)
    trainer.train()
    if lengths and set(lengths) != {args.new_tokens}:
        raise RuntimeError(f"TRL completions were not all {args.new_tokens} tokens: {sorted(set(lengths))}")
    seconds = stamps[-1] - stamps[args.warmup - 1]
    split = {k: (snapshots[-1][k] - snapshots[args.warmup - 1][k]) / args.steps for k in phases}
    split["update+other"] = seconds / args.steps - sum(split.values())
    return {"samples": args.steps * args.prompts * args.group, "seconds": seconds, "split": split,
            "reward": statistics.mean(rewards), "checked_lengths": bool(lengths)}


def _time_trl_phases(trainer, phases: dict[str, float]) -> None:
    """Accumulate seconds spent in TRL's generation, reward and reference passes into ``phases``
    by wrapping the trainer's own methods (instance attributes shadow the class's); the update
    (policy forward, backward, optimizer step) and TRL's bookkeeping are the rest of the step."""

    def timed(fn, name, when=lambda *a, **k: True):
        def wrapper(*a, **k):
            if not when(*a, **k):
                return fn(*a, **k)
            start = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                phases[name] += time.perf_counter() - start

        return wrapper

    trainer._generate = timed(trainer._generate, "generate")
    trainer._calculate_rewards = timed(trainer._calculate_rewards, "score")
    trainer._get_per_token_logps_and_entropies = timed(
        trainer._get_per_token_logps_and_entropies, "reference", when=lambda model, *a, **k: model is trainer.ref_model
    )


RUNNERS = {"tether": run_tether, "trl": run_trl}


def child(args) -> None:
    result = RUNNERS[args.side](args)
    result["samples_per_second"] = result["samples"] / result["seconds"]
    report(result)



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--steps", type=int, default=3, help="timed optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=1, help="optimizer steps before the timed window")
    parser.add_argument("--prompts", type=int, default=4, help="prompts per step")
    parser.add_argument("--group", type=int, default=4, help="completions per prompt (GRPO group size)")
    parser.add_argument("--new-tokens", type=int, default=32, help="tokens per completion (exactly: no early stop)")
    parser.add_argument("--beta", type=float, default=0.04, help="KL coefficient (> 0: both sides keep a reference copy)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", default="default", help="'tiny' for a quick smoke run of the harness (with --beta 0: TRL rebuilds its reference from a path)")
    parser.add_argument("--sides", default="tether,trl", help="comma-separated subset of tether,trl")
    args = parser.parse_args()
    if args.side:
        return child(args)
    if args.warmup < 1:
        parser.error("--warmup must be at least 1 (the window starts at the end of a step)")
    argv = sys.argv[1:]
    sides = [s for s in args.sides.split(",") if s]
    name = "SmolLM2-135M-Instruct" if args.model == "default" else args.model
    print(f"GRPO, {name}, fp32 CPU, {args.threads} threads, {args.prompts} prompts x {args.group} completions "
          f"x {args.new_tokens} tokens per step, beta {args.beta}, {args.warmup} warm-up + {args.steps} timed steps", flush=True)
    print(f"{'round':>5} {'side':<7} {'samples':>7} {'seconds':>8} {'samples/s':>9} {'peak RSS MB':>12}  split s/step", flush=True)

    def show(r: int, side: str, res: dict) -> None:
        split = " ".join(f"{k} {v:.2f}" for k, v in res.get("split", {}).items())
        print(f"{r + 1:>5} {side:<7} {res['samples']:>7} {res['seconds']:>8.2f} {res['samples_per_second']:>9.2f} {res['peak_rss_mb']:>12.0f}  {split}", flush=True)

    results = run_rounds(__file__, argv, args.rounds, sides, args.threads, show)
    for s in sides:
        if results[s][0].get("split"):
            keys = results[s][0]["split"]
            print(f"{s} per step (median s): " + ", ".join(f"{k} {statistics.median(x['split'][k] for x in results[s]):.2f}" for k in keys))
    print_summary(results, "samples_per_second", "samples/s")


if __name__ == "__main__":
    main()
