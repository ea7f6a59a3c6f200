"""Reward-model training throughput and peak memory: tether vs Hugging Face TRL's RewardTrainer.

    flock /tmp/tether-heavy.lock python bench/reward.py --rounds 3 --steps 6 --warmup 2

Same default model (SmolLM2-135M-Instruct), same bundled pairs tokenized once by tether's chat
template (TRL gets the very same token ids as ``chosen_ids``/``rejected_ids``), in the same order:
TRL's data set is the stream of pairs tether's seeded step plan draws, step by step, read
sequentially (``train_sampling_strategy="sequential"``), so step k trains on the same pairs on both
sides. Same batch of pairs, fp32 on CPU, no gradient checkpointing, no evaluation, logging off,
same centring coefficient. Each side runs in its own subprocess (so peak RSS is its own); the
sides alternate and swap order every round. Throughput is pairs per second over the steps after
``--warmup``; each side's minimum, median and maximum over the rounds are printed beside the
ratio of medians. tether runs its default layout (each pair's prompt computed once, rows packed);
``--layout packed|padded`` measures the alternatives.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from harness import ROUNDS, print_summary, report, run_rounds, scratch_dir  # noqa: E402

SEED = 0

# tether's row layouts (rm.share_prompt, data.pack): the default shares each pair's prompt; the others are for ablation.
LAYOUTS = {
    "shared_prompt": ["rm.share_prompt=true"],
    "packed": ["rm.share_prompt=false", "data.pack=true"],
    "padded": ["rm.share_prompt=false", "data.pack=false"],
}


def _model_dir(name: str) -> str:
    from tether.models import default_model_dir

    return str(default_model_dir()) if name == "default" else name


def _examples(max_length: int, model: str = "default"):
    from transformers import AutoTokenizer

    from tether.config import DataConfig
    from tether.trainers.prepare import prepare_data

    tokenizer = AutoTokenizer.from_pretrained(_model_dir(model), local_files_only=True)  # not the model: it would count in TRL's RSS
    return prepare_data(tokenizer, DataConfig(path="bundled:preferences", eval_fraction=0.0, max_length=max_length), "preference", SEED).train


def _step_order(num_examples: int, args) -> list[int]:
    """Example indices in the order tether's fit trains on them, step after step."""
    from tether.trainers.common import StepPlan

    plan = StepPlan(num_examples, args.batch, 1.0, args.warmup + args.steps, SEED)
    return [i for s in range(args.warmup + args.steps) for i in plan.indices(s)]


def run_tether(args) -> dict:
    from tether.config import load_config
    from tether.trainers.rm import RMConfig, run_rm_train

    out = scratch_dir(prefix="bench-rm-tether-")
    cfg = load_config(RMConfig, None, [
        f"model.name_or_path={_model_dir(args.model)}", f"train.output_dir={out}", f"train.max_steps={args.warmup + args.steps}", f"train.batch_size={args.batch}",
        f"train.micro_batch_size={args.batch}", "train.save_every=0", "train.progress=false", f"train.threads={args.threads}",
        f"train.seed={SEED}", "data.eval_fraction=0", f"data.max_length={args.max_length}", "rm.centering_coef=0.01", *LAYOUTS[args.layout],
    ])
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        run_rm_train(cfg)
    times = [r["time"] for r in map(json.loads, open(Path(out) / "metrics.jsonl")) if r["split"] == "train"]
    seconds = times[-1] - times[args.warmup - 1]
    return {"pairs_per_second": args.steps * args.batch / seconds}


def run_trl(args) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
    from trl import RewardConfig, RewardTrainer

    torch.set_num_threads(args.threads)
    examples = _examples(args.max_length, args.model)
    order = _step_order(len(examples), args)  # tether's pairs, in tether's order
    dataset = Dataset.from_dict({"chosen_ids": [examples[i].sequences[0][0] for i in order],
                                 "rejected_ids": [examples[i].sequences[1][0] for i in order]})
    path = _model_dir(args.model)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = "<|endoftext|>"
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=torch.float32, local_files_only=True)
    model.config.pad_token_id = tokenizer.pad_token_id

    stamps: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, *a, **k):
            stamps.append(time.perf_counter())

    config = RewardConfig(
        output_dir=scratch_dir(prefix="bench-rm-trl-"), per_device_train_batch_size=args.batch, gradient_accumulation_steps=1,
        max_steps=args.warmup + args.steps, learning_rate=1e-5, bf16=False, fp16=False, gradient_checkpointing=False,
        logging_strategy="no", save_strategy="no", eval_strategy="no", report_to=[], use_cpu=True, max_length=args.max_length,
        center_rewards_coefficient=0.01, disable_tqdm=True, dataloader_num_workers=0, seed=SEED,
        train_sampling_strategy="sequential",
    )
    trainer = RewardTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer, callbacks=[Clock()])
    if len(trainer.train_dataset) != len(order):
        raise RuntimeError(f"TRL dropped {len(order) - len(trainer.train_dataset)} pairs over max_length; the sides would not train on the same pairs")
    trainer.train()
    seconds = stamps[-1] - stamps[args.warmup - 1]
    return {"pairs_per_second": args.steps * args.batch / seconds}


def child(args) -> None:
    result = (run_tether if args.side == "tether" else run_trl)(args)
    report(result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", choices=["tether", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--model", default="default", help="'default' or a Hugging Face model directory (a small one for a smoke test)")
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--layout", choices=list(LAYOUTS), default="shared_prompt", help="tether side: how sequences become rows (default: tether's default)")
    args = parser.parse_args()
    if args.side:
        return child(args)
    print(f"reward model, {args.model}, fp32 CPU, {args.threads} threads, batch {args.batch} pairs, max_length {args.max_length}, "
          f"{args.warmup} warm-up + {args.steps} timed steps, {args.rounds} rounds, tether layout {args.layout}", flush=True)
    print(f"{'round':>5} {'side':<7} {'pairs/s':>8} {'peak RSS MB':>12}", flush=True)

    def show(r: int, side: str, res: dict) -> None:
        print(f"{r + 1:>5} {side:<7} {res['pairs_per_second']:>8.3f} {res['peak_rss_mb']:>12.0f}", flush=True)

    results = run_rounds(__file__, sys.argv[1:], args.rounds, ("tether", "trl"), args.threads, show)
    print_summary(results, "pairs_per_second", "pairs/s", digits=3, target="(target >= 1.5x)")


if __name__ == "__main__":
    main()
