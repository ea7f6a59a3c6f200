"""DPO throughput and peak memory: tether vs Hugging Face TRL's DPOTrainer, on CPU in fp32.

    flock /tmp/tether-heavy.lock .venv/bin/python bench/dpo.py

Full fine-tune of the default model (SmolLM2-135M-Instruct, the same cached safetensors on both
sides), the same bundled preference pairs in the same order, batch 8 pairs (no accumulation),
max length 512, learning rate, AdamW and β. tether caches its reference log-probabilities in one
pass before training (``dpo.reference=cached``), so TRL precomputes its own too
(``precompute_ref_log_probs=True``, which also frees it from holding a reference model), and that
pass counts on both sides. TRL runs at its best on this CPU: bf16 off, gradient checkpointing off
(its ``padding_free`` is disabled in TRL 1.16, so it pads). tether runs each pair's prompt once with
both replies branching off it, its DPO default (``--layout packed`` or ``padded`` times the others).

Each side runs in its own subprocess (so its peak RSS is its own, via getrusage), one at a time,
alternating within a round and swapping who goes first each round. The data set handed to each
side is exactly the pairs its steps will train on (``(warmup + steps) × batch`` pairs, every pair
once), so both reference passes cover the same pairs. Time per pair is

    reference-pass seconds / pairs in the pass  +  timed-step seconds / pairs in the timed steps

where the timed steps run from the end of optimizer step ``--warmup`` to the end of the last
(tether's metrics.jsonl time stamps, TRL's ``on_step_end``); pairs per second is its inverse.
Then each tether loss variant is timed the same way (its own bundled data: unpaired examples for
KTO, rankings of 4 for listwise), in one more subprocess.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from harness import ROUNDS, print_summary, report, run_rounds, run_side, scratch_dir  # noqa: E402

SEED = 0
LR = 5e-6
BETA = 0.1


def _model_dir(args) -> str:
    from tether.models import default_model_dir

    return str(default_model_dir()) if args.model == "default" else args.model


def _pairs(args, data_kind: str = "preference", path: str = "bundled:preferences"):
    """The first ``(warmup + steps) × batch`` examples (file order), tokenized by tether, and their records."""
    from tether.config import DataConfig
    from tether.data import load_records
    from transformers import AutoTokenizer

    from tether.trainers.prepare import prepare_data

    # Only the tokenizer: loading a second model here would muddy both sides' peak memory.
    tokenizer = AutoTokenizer.from_pretrained(_model_dir(args), local_files_only=True)
    n = (args.warmup + args.steps) * args.batch
    cfg = DataConfig(path=path, eval_fraction=0.0, max_length=args.max_length)
    examples = prepare_data(tokenizer, cfg, data_kind, SEED).train
    records = list(load_records(path, kind=data_kind).records)
    assert len(records) == len(examples) >= n, "an example was dropped or the set is too small for these steps"
    return examples[:n], records[:n]


def _step_order(n: int, args) -> list[list[int]]:
    """Indices of each step's examples, as tether's fit draws them from a list of n examples."""
    from tether.trainers.common import StepPlan

    plan = StepPlan(n, args.batch, 1.0, args.warmup + args.steps, SEED)
    return [plan.indices(s) for s in range(args.warmup + args.steps)]


def _tether_run(args, loss: str, examples) -> dict:
    """Reference pass (if the loss needs one) and training, timed; examples are used as given."""
    import contextlib
    import io

    from tether.config import DPOConfig, load_config
    from tether.trainers.common import load_trainable_model
    from tether.trainers.dpo import build_objective
    from tether.trainers.offline import fit
    from tether.trainers.prepare import PreparedData

    out = scratch_dir(prefix=f"bench-dpo-{loss}-")
    model_dir = _model_dir(args)  # before TETHER_CACHE moves: the default model's converted copy lives in the real cache
    real_cache = os.environ.get("TETHER_CACHE")
    os.environ["TETHER_CACHE"] = scratch_dir(prefix="bench-dpo-cache-")  # cold: the reference pass really runs
    cfg = load_config(DPOConfig, None, [
        f"model.name_or_path={model_dir}", f"dpo.loss={loss}", f"dpo.beta={BETA}", "dpo.reference=cached",
        f"train.output_dir={out}", f"train.max_steps={args.warmup + args.steps}", f"train.batch_size={args.batch}",
        f"train.micro_batch_size={args.batch}", "train.save_every=0", "train.progress=false", f"train.threads={args.threads}",
        f"train.lr={LR}", f"train.seed={SEED}", "data.eval_fraction=0", f"data.max_length={args.max_length}",
        f"data.pack={str(args.layout == 'packed').lower()}", f"dpo.share_prompt={str(args.layout == 'shared_prompt').lower()}",
    ])
    model, tokenizer = load_trainable_model(cfg.model, cfg.lora, cfg.train.seed)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        start = time.perf_counter()
        objective = build_objective(cfg, model, tokenizer, PreparedData(examples, []))
        # The cached reference fills itself lazily when fit starts; run that pass here so it is
        # timed as the reference pass (fit's own call then finds every example cached).
        objective.prepare(model, examples)
        ref_seconds = time.perf_counter() - start
        fit(model, objective, examples, [], cfg.train, title=loss)
    times = [r["time"] for r in map(json.loads, open(Path(out) / "metrics.jsonl")) if r["split"] == "train"]
    needs_pass = objective.spec.needs_reference
    for used in (out, os.environ["TETHER_CACHE"]):  # a checkpoint of the default model is ~1 GB; the variants make ten
        shutil.rmtree(used, ignore_errors=True)
    # Back to the real cache, so the next run in this process (the variants) finds the converted default model there.
    if real_cache is None:
        del os.environ["TETHER_CACHE"]
    else:
        os.environ["TETHER_CACHE"] = real_cache
    return {
        "ref_seconds": ref_seconds if needs_pass else 0.0,
        "ref_examples": len(examples) if needs_pass else 0,
        "seconds": times[-1] - times[args.warmup - 1],
        "examples": args.steps * args.batch,
        "tokens": sum(e.num_tokens for e in examples[args.warmup * args.batch :]),
    }


def run_tether(args) -> dict:
    examples, _ = _pairs(args)
    return _tether_run(args, "dpo", examples)


def run_trl(args) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    torch.set_num_threads(args.threads)
    _, records = _pairs(args)
    order = [i for step in _step_order(len(records), args) for i in step]
    dataset = Dataset.from_dict({
        "prompt": [records[i].prompt for i in order],
        "chosen": [[{"role": "assistant", "content": records[i].chosen}] for i in order],
        "rejected": [[{"role": "assistant", "content": records[i].rejected}] for i in order],
    })
    path = _model_dir(args)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, local_files_only=True)

    stamps: list[float] = []
    ref: dict[str, float] = {}

    class Clock(TrainerCallback):
        def on_step_end(self, *a, **k):
            stamps.append(time.perf_counter())

    class TimedDPOTrainer(DPOTrainer):
        def _precompute_ref_logps(self, dataset, name, batch_size):
            start = time.perf_counter()
            out = super()._precompute_ref_logps(dataset, name, batch_size)
            ref[name] = time.perf_counter() - start
            return out

    config = DPOConfig(
        output_dir=scratch_dir(prefix="bench-dpo-trl-"), per_device_train_batch_size=args.batch, gradient_accumulation_steps=1,
        max_steps=args.warmup + args.steps, learning_rate=LR, beta=BETA, loss_type=["sigmoid"], bf16=False, fp16=False,
        gradient_checkpointing=False, precompute_ref_log_probs=True, logging_strategy="no", save_strategy="no", eval_strategy="no",
        report_to=[], use_cpu=True, max_length=args.max_length, padding_free=args.trl_padding_free,
        train_sampling_strategy="sequential", disable_tqdm=True, dataloader_num_workers=0, seed=SEED, lr_scheduler_type="cosine",
        warmup_steps=0,
    )
    trainer = TimedDPOTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer, callbacks=[Clock()])
    trainer.train()
    return {"ref_seconds": ref["train"], "ref_examples": len(dataset), "seconds": stamps[-1] - stamps[args.warmup - 1],
            "examples": args.steps * args.batch, "attn": model.config._attn_implementation}


def run_variants(args) -> dict:
    """Every loss variant on its own data, one after the other, in this one process."""
    from tether.losses.preference import PreferenceLoss
    from tether.trainers.dpo import BUNDLED_DATA, DATA_KIND, add_mismatched_completions

    out = {}
    for kind in PreferenceLoss:
        examples, _ = _pairs(args, DATA_KIND[kind.data], BUNDLED_DATA[kind.data])
        if kind.data == "unpaired":
            add_mismatched_completions(examples, SEED, args.max_length)
        res = _tether_run(args, kind.value, examples)
        res["sequences"] = len(examples[0].sequences)
        out[kind.value] = res
        print(f"VARIANT {kind.value} " + json.dumps(res), flush=True)
    return out


def _rate(res: dict) -> float:
    """Examples per second with the reference pass amortised over the examples it covered."""
    per_example = res["seconds"] / res["examples"] + (res["ref_seconds"] / res["ref_examples"] if res["ref_examples"] else 0.0)
    return 1.0 / per_example


def child(args) -> None:
    result = {"tether": run_tether, "trl": run_trl, "variants": run_variants}[args.side](args)
    if args.side != "variants":
        result["rate"] = _rate(result)
    report(result)


def _child_argv(args) -> list[str]:
    argv = [f"--model={args.model}", f"--steps={args.steps}", f"--warmup={args.warmup}", f"--batch={args.batch}", f"--max-length={args.max_length}", f"--threads={args.threads}"]
    return argv + [f"--layout={args.layout}"] + ["--trl-padding-free"] * args.trl_padding_free



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", choices=["tether", "trl", "variants"], help=argparse.SUPPRESS)
    parser.add_argument("--model", default="default", help="'default' or a Hugging Face model directory (a smoke test may pass a tiny one)")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="tether/TRL rounds (0: only the per-variant table)")
    parser.add_argument("--steps", type=int, default=2, help="timed optimizer steps per run (one full run stays near 10 minutes on 2 cores)")
    parser.add_argument("--warmup", type=int, default=1, help="optimizer steps before the timed window")
    parser.add_argument("--batch", type=int, default=8, help="pairs per optimizer step")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--layout", choices=["shared_prompt", "packed", "padded"], default="shared_prompt", help="tether side: how pairs become rows (shared_prompt is its default)")
    parser.add_argument("--trl-padding-free", action="store_true", help="TRL side: padding_free=True (TRL 1.16 warns and pads anyway)")
    parser.add_argument("--no-variants", action="store_true", help="skip the per-variant table")
    parser.add_argument("--variant-steps", type=int, default=1, help="timed steps per variant")
    parser.add_argument("--variant-batch", type=int, default=4, help="examples per step for the per-variant table")
    args = parser.parse_args()
    if args.side:
        return child(args)
    print(f"DPO, SmolLM2-135M-Instruct full fine-tune, fp32 CPU, {args.threads} threads, batch {args.batch} pairs, "
          f"max_length {args.max_length}, {args.warmup} warm-up + {args.steps} timed steps, reference log-probs precomputed "
          f"on both sides, tether layout {args.layout}, TRL padding_free={args.trl_padding_free}", flush=True)
    print(f"{'round':>5} {'side':<7} {'ref pass s':>10} {'steps s':>8} {'pairs/s':>8} {'peak RSS MB':>12}", flush=True)

    def show(r: int, side: str, res: dict) -> None:
        print(f"{r + 1:>5} {side:<7} {res['ref_seconds']:>10.2f} {res['seconds']:>8.2f} {res['rate']:>8.3f} {res['peak_rss_mb']:>12.0f}", flush=True)

    if args.rounds:  # --rounds 0: only the per-variant table
        results = run_rounds(__file__, _child_argv(args), args.rounds, ("tether", "trl"), args.threads, show)
        print(f"TRL attention: {results['trl'][0].get('attn')}")
        print_summary(results, "rate", "pairs/s", digits=3, target="(target >= 1.5x; peak memory target <= 0.65x)")
    if args.no_variants:
        return
    variants = run_side(__file__, "variants", _child_argv(argparse.Namespace(**{**vars(args), "steps": args.variant_steps, "batch": args.variant_batch})), args.threads)
    print(f"\ntether per loss variant ({args.warmup} warm-up + {args.variant_steps} timed steps of {args.variant_batch} examples each):")
    print(f"{'loss':<9} {'seqs/example':>12} {'ref pass s':>10} {'steps s':>8} {'examples/s':>10} {'steps only':>10}")
    for kind, res in variants.items():
        if kind == "peak_rss_mb":
            continue
        steps_only = res["examples"] / res["seconds"]
        print(f"{kind:<9} {res['sequences']:>12} {res['ref_seconds']:>10.2f} {res['seconds']:>8.2f} {_rate(res):>10.3f} {steps_only:>10.3f}")


if __name__ == "__main__":
    main()
