"""SFT throughput and peak memory: tether vs Hugging Face TRL's SFTTrainer, on CPU in fp32.

    flock /tmp/tether-heavy.lock python bench/sft.py --rounds 3 --steps 12

Same default model (SmolLM2-135M-Instruct, loaded from the same cached safetensors), same bundled
demonstrations in the same order (tether's seeded step plan; TRL gets those examples laid out in
that order and reads them sequentially), same batch (8, no accumulation), max length, learning
rate and AdamW; completion-only loss on both sides; no evaluation, no saving, no logging inside the
timed window. TRL is set up at its fastest on this CPU: bf16 off, gradient checkpointing off; it
pads each batch to its longest example. tether runs its default layout, packed rows
(``data.pack=true``; ``--layout padded`` times padded rows).

What the step costs (bench/sft_profile.py): about three quarters of a tether step is the decoder's
matrix products, running near this CPU's fp32 matmul speed, so tokens per second follow the FLOPs
per token. TRL's extra work is the LM head at every position of its padded batch (tether runs it
only at the completion tokens) and the padding itself; on the bundled demonstrations (82 tokens
median) that is 12-30% more FLOPs per step than tether's packed rows, which bounds what the ratio can show here.

Each side runs in its own subprocess (so its peak RSS is its own), one at a time, alternating
within a round and swapping who goes first each round. The timed window is the same on both
sides: from the end of optimizer step ``--warmup`` to the end of the last step (tether's step
time stamps in metrics.jsonl, TRL's ``on_step_end`` callback). Tokens per second counts real
(non-padding) tokens of the timed steps, each side's own tokenization of the same examples.
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
LR = 1e-5


def _data(max_length: int):
    """tether's train examples and the raw records they came from (same order, nothing dropped)."""
    from tether.config import DataConfig
    from tether.data import load_records
    from tether.models import load_model
    from tether.trainers.prepare import prepare_data

    _, tokenizer = load_model("default")
    cfg = DataConfig(path="bundled:demonstrations", eval_fraction=0.0, max_length=max_length)
    examples = prepare_data(tokenizer, cfg, "demonstration", SEED).train
    records = list(load_records(cfg.path, kind="demonstration").records)
    assert len(records) == len(examples), "a demonstration was dropped; the two sides would not see the same data"
    return examples, records


def _step_order(num_examples: int, args) -> list[list[int]]:
    """Example indices of every optimizer step, as tether's fit will draw them."""
    from tether.trainers.common import StepPlan

    plan = StepPlan(num_examples, args.batch, 1.0, args.warmup + args.steps, SEED)
    return [plan.indices(s) for s in range(args.warmup + args.steps)]


def run_tether(args) -> dict:
    import contextlib
    import io

    from tether.config import SFTConfig, load_config
    from tether.trainers.common import load_trainable_model
    from tether.trainers.offline import fit
    from tether.trainers.sft import SFTObjective

    out = scratch_dir(prefix="bench-sft-tether-")
    cfg = load_config(SFTConfig, None, [
        f"train.output_dir={out}", f"train.max_steps={args.warmup + args.steps}", f"train.batch_size={args.batch}",
        f"train.micro_batch_size={args.batch}", "train.save_every=0", "train.progress=false", f"train.threads={args.threads}",
        f"train.lr={LR}", f"train.seed={SEED}", "data.eval_fraction=0",
        f"data.max_length={args.max_length}", f"data.pack={str(args.layout == 'packed').lower()}",
    ])
    examples, _ = _data(args.max_length)
    model, tokenizer = load_trainable_model(cfg.model, cfg.lora, cfg.train.seed)
    objective = SFTObjective(tokenizer.pad_token_id, cfg.data.pack, cfg.data.max_length, cfg.model.chunk_size)
    # fit() alone: run_sft's untimed extras (saving the model, sample generation) are not SFT steps.
    with contextlib.redirect_stdout(io.StringIO()):
        fit(model, objective, examples, [], cfg.train, title="sft")
    times = [r["time"] for r in map(json.loads, open(Path(out) / "metrics.jsonl")) if r["split"] == "train"]
    steps = _step_order(len(examples), args)
    tokens = sum(examples[i].num_tokens for step in steps[args.warmup :] for i in step)
    return {"tokens": tokens, "seconds": times[-1] - times[args.warmup - 1]}


def run_trl(args) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from tether.models import default_model_dir

    torch.set_num_threads(args.threads)
    _, records = _data(args.max_length)
    order = [i for step in _step_order(len(records), args) for i in step]
    dataset = Dataset.from_dict({
        "prompt": [records[i].prompt for i in order],
        "completion": [[{"role": "assistant", "content": records[i].completion}] for i in order],
    })
    path = default_model_dir()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, local_files_only=True)

    stamps: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, *a, **k):
            stamps.append(time.perf_counter())

    config = SFTConfig(
        output_dir=scratch_dir(prefix="bench-sft-trl-"), per_device_train_batch_size=args.batch, gradient_accumulation_steps=1,
        max_steps=args.warmup + args.steps, learning_rate=LR, bf16=False, fp16=False, gradient_checkpointing=False,
        logging_strategy="no", save_strategy="no", eval_strategy="no", report_to=[], use_cpu=True, max_length=args.max_length,
        packing=args.trl_packing, padding_free=args.trl_padding_free, train_sampling_strategy="sequential",
        disable_tqdm=True, dataloader_num_workers=0, seed=SEED, lr_scheduler_type="cosine", warmup_steps=0,
    )
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer, callbacks=[Clock()])
    # The tokenized dataset is in training order: row k is example k of the stream of steps.
    lengths = [len(ids) for ids in trainer.train_dataset["input_ids"]]
    trainer.train()
    timed = lengths[args.warmup * args.batch : (args.warmup + args.steps) * args.batch]
    return {"tokens": sum(timed), "seconds": stamps[-1] - stamps[args.warmup - 1],
            "attn": model.config._attn_implementation}


def child(args) -> None:
    result = (run_tether if args.side == "tether" else run_trl)(args)
    result["tokens_per_second"] = result["tokens"] / result["seconds"]
    report(result)



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", choices=["tether", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--steps", type=int, default=12, help="timed optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=2, help="optimizer steps before the timed window")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--layout", choices=["packed", "padded"], default="packed", help="tether side: row layout (packed is its SFT default)")
    parser.add_argument("--trl-packing", action="store_true", help="TRL side: packing=True")
    parser.add_argument("--trl-padding-free", action="store_true", help="TRL side: padding_free=True")
    args = parser.parse_args()
    if args.side:
        return child(args)
    print(f"SFT, SmolLM2-135M-Instruct, fp32 CPU, {args.threads} threads, batch {args.batch}, max_length {args.max_length}, "
          f"{args.warmup} warm-up + {args.steps} timed steps, {args.rounds} rounds, tether layout {args.layout}, "
          f"TRL packing={args.trl_packing} padding_free={args.trl_padding_free}", flush=True)
    print(f"{'round':>5} {'side':<7} {'tokens':>7} {'seconds':>8} {'tok/s':>8} {'peak RSS MB':>12}", flush=True)

    def show(r: int, side: str, res: dict) -> None:
        print(f"{r + 1:>5} {side:<7} {res['tokens']:>7} {res['seconds']:>8.2f} {res['tokens_per_second']:>8.1f} {res['peak_rss_mb']:>12.0f}", flush=True)

    results = run_rounds(__file__, sys.argv[1:], args.rounds, ("tether", "trl"), args.threads, show)
    print(f"TRL attention: {results['trl'][0].get('attn')}")
    print_summary(results, "tokens_per_second", "tok/s", digits=1, target="(target >= 1.3x)")


if __name__ == "__main__":
    main()
