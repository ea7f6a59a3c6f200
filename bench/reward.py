"""Reward-model training throughput and peak memory: tether vs Hugging Face TRL's RewardTrainer.

    flock /tmp/tether-heavy.lock python bench/reward.py --rounds 2 --steps 6 --warmup 2

Same default model (SmolLM2-135M-Instruct), same bundled pairs tokenized once by tether's chat
template (TRL gets the very same token ids as ``chosen_ids``/``rejected_ids``), same batch of
pairs, fp32 on CPU, no gradient checkpointing, no evaluation, logging off, same centring
coefficient. Each side runs in its own subprocess (so peak RSS is its own); the sides alternate
and swap order every round. Throughput is pairs per second over the steps after ``--warmup``;
the figures are medians over rounds. tether runs its default layout (each pair's prompt computed
once, rows packed); ``--layout packed|padded`` measures the alternatives.
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

from harness import report, run_side, scratch_dir  # noqa: E402

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
    return prepare_data(tokenizer, DataConfig(path="bundled:preferences", eval_fraction=0.0, max_length=max_length), "preference", 0).train


def run_tether(args) -> dict:
    from tether.config import load_config
    from tether.trainers.rm import RMConfig, run_rm_train

    out = scratch_dir(prefix="bench-rm-tether-")
    cfg = load_config(RMConfig, None, [
        f"model.name_or_path={_model_dir(args.model)}", f"train.output_dir={out}", f"train.max_steps={args.warmup + args.steps}", f"train.batch_size={args.batch}",
        f"train.micro_batch_size={args.batch}", "train.save_every=0", "train.progress=false", f"train.threads={args.threads}",
        "data.eval_fraction=0", f"data.max_length={args.max_length}", "rm.centering_coef=0.01", *LAYOUTS[args.layout],
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
    dataset = Dataset.from_dict({"chosen_ids": [e.sequences[0][0] for e in examples], "rejected_ids": [e.sequences[1][0] for e in examples]})
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
        center_rewards_coefficient=0.01, disable_tqdm=True, dataloader_num_workers=0, seed=0,
    )
    trainer = RewardTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer, callbacks=[Clock()])
    trainer.train()
    seconds = stamps[-1] - stamps[args.warmup - 1]
    return {"pairs_per_second": args.steps * args.batch / seconds}


def child(args) -> None:
    result = (run_tether if args.side == "tether" else run_trl)(args)
    report(result)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--side", choices=["tether", "trl"])
    parser.add_argument("--model", default="default", help="'default' or a Hugging Face model directory (a small one for a smoke test)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--layout", choices=list(LAYOUTS), default="shared_prompt", help="tether side: how sequences become rows (default: tether's default)")
    args = parser.parse_args()
    if args.side:
        return child(args)
    results: dict[str, list[dict]] = {"tether": [], "trl": []}
    for r in range(args.rounds):
        for side in (("tether", "trl") if r % 2 == 0 else ("trl", "tether")):
            results[side].append(run_side(__file__, side, sys.argv[1:], args.threads))
            print(f"round {r + 1} {side}: {results[side][-1]}", flush=True)
    med = {s: statistics.median(x["pairs_per_second"] for x in v) for s, v in results.items()}
    rss = {s: max(x["peak_rss_mb"] for x in v) for s, v in results.items()}
    runs = {s: ", ".join(f"{x['pairs_per_second']:.2f}" for x in v) for s, v in results.items()}
    print(f"tether ({args.layout}): {med['tether']:.2f} pairs/s (runs: {runs['tether']}), peak RSS {rss['tether']:.0f} MB")
    print(f"TRL RewardTrainer: {med['trl']:.2f} pairs/s (runs: {runs['trl']}), peak RSS {rss['trl']:.0f} MB")
    print(f"throughput ratio tether/TRL: {med['tether'] / med['trl']:.2f}x (target >= 1.5x)")


if __name__ == "__main__":
    main()
