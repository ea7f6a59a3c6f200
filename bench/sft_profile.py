"""Where one SFT step's time goes, against this CPU's fp32 matrix-product speed.

    flock /tmp/tether-heavy.lock env OMP_NUM_THREADS=2 python bench/sft_profile.py

For the first optimizer steps of bench/sft.py (default model, bundled demonstrations, tether's
seeded step plan, batch 8, max length 512), in each row layout (padded, packed):

* rows × width of the batch tensor against its real tokens (what padding or packing costs);
* the model FLOPs of one training step counted from the shapes (6 × weights × tokens for the
  decoder's linear layers over every row position, the LM head only at the loss positions,
  attention score/value products over the T×T (padded: causal half) pairs each row computes);
* the measured seconds of forward+backward+AdamW step (median of ``--steps``) and the GFLOP/s
  that makes, beside the fp32 GFLOP/s of ``torch.matmul`` at the step's own matrix shapes;
* a torch.profiler table of one step (top operators by self CPU time).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from harness import alternate  # noqa: E402


def matmul_gflops(m: int, k: int, n: int, repeats: int = 5) -> float:
    """fp32 GFLOP/s of [m, k] @ [k, n] on this CPU (best of ``repeats``)."""
    import torch

    a, b = torch.randn(m, k), torch.randn(k, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * m * k * n / best / 1e9


def step_flops(cfg, batch) -> dict[str, float]:
    """Training FLOPs (forward + backward = 3 × forward) of one step on ``batch``, by part."""
    h, inter, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    kv = cfg.num_key_value_heads * (h // cfg.num_attention_heads)
    rows, width = batch.input_ids.shape
    positions = rows * width  # every position of the tensor goes through the decoder, padding too
    linear = layers * (h * h * 2 + h * kv * 2 + 3 * h * inter)  # q, o, k, v, gate/up/down
    head = h * cfg.vocab_size
    # QK^T and AV: 2 products of T×T×h per row and layer; SDPA with a mask computes the full square.
    attention = layers * rows * 2 * width * width * h
    return {
        "linear": 6.0 * linear * positions,
        "head": 6.0 * head * batch.num_loss_tokens,
        "attention": 3.0 * 2 * attention,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="distinct timed steps (after one warm-up step per layout)")
    parser.add_argument("--rounds", type=int, default=3, help="times each step runs in each layout")
    parser.add_argument("--model", default="default", help="'tiny' for a smoke run of the script")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--layouts", nargs="+", default=["padded", "packed", "packed_wide"], choices=["padded", "packed", "packed_wide"])
    parser.add_argument("--profile-layouts", nargs="*", default=["padded"], help="layouts to run one step of under torch.profiler (none: skip)")
    args = parser.parse_args()

    import torch

    from tether.config import DataConfig, TrainConfig
    from tether.data.batches import collate, pack_batch
    from tether.models import forward_token_logprobs, load_model
    from tether.trainers.common import StepPlan, build_optimizer
    from tether.trainers.prepare import prepare_data

    torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model)
    model.train()
    examples = prepare_data(tokenizer, DataConfig(path="bundled:demonstrations", eval_fraction=0.0, max_length=args.max_length), "demonstration", 0).train
    plan = StepPlan(len(examples), args.batch, 1.0, args.steps + 1, 0)
    steps = [[examples[i] for i in plan.indices(s)] for s in range(args.steps + 1)]
    optimizer = build_optimizer(model, TrainConfig(lr=0.0))  # tether's own (fused AdamW); lr 0: every round times the same weights
    cfg = model.config
    print(f"attention implementation: {cfg._attn_implementation}; {args.threads} threads; torch {torch.__version__}")
    lengths = [e.num_tokens for e in examples]
    print(f"demonstrations: {len(examples)}, tokens per example median {statistics.median(lengths):.0f}, max {max(lengths)}")

    def one_step(step_examples, layout: str):
        if layout == "packed_wide":  # rows of up to max_length tokens (collate's packing caps rows at the longest sequence)
            seqs = [seq for e in step_examples for seq in e.sequences]
            batch = pack_batch([ids for ids, _ in seqs], [p for _, p in seqs], tokenizer.pad_token_id, args.max_length)
        else:
            batch = collate([e.sequences for e in step_examples], tokenizer.pad_token_id, layout == "packed", args.max_length)
        logprobs = forward_token_logprobs(model, batch)  # [R, T]
        loss = -(logprobs * batch.loss_mask).sum() / batch.num_loss_tokens
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # as fit does (train.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return batch

    for layout in args.layouts:  # warm-up: allocator, optimizer state, kernels
        one_step(steps[0], layout)
    # The machine is shared: every round runs each timed step in every layout back to back, the
    # layout order swapping each round, so a slow spell falls on all of them; min and median per step.
    seconds: dict[tuple[str, int], list[float]] = {}
    shapes: dict[tuple[str, int], object] = {}
    for r, layout in alternate(args.rounds, args.layouts):
        for s in range(1, args.steps + 1):
            start = time.perf_counter()
            batch = one_step(steps[s], layout)
            seconds.setdefault((layout, s), []).append(time.perf_counter() - start)
            shapes[(layout, s)] = batch
    print(f"\n{'layout':<11} {'step':>4} {'rows x width':>13} {'real':>5} {'real %':>6} {'GFLOP':>6} {'min s':>6} {'med s':>6} "
          f"{'tok/s (min s)':>13} {'GFLOP/s (min s)':>15} {'TRL GFLOP (padded)':>9}")
    for layout in args.layouts:
        for s in range(1, args.steps + 1):
            batch = shapes[(layout, s)]
            parts = step_flops(cfg, batch)
            total = sum(parts.values())
            # TRL pads as the padded layout does but runs the LM head at every position of the tensor.
            trl = parts["linear"] + parts["attention"] + 6.0 * cfg.hidden_size * cfg.vocab_size * batch.input_ids.numel()
            trl_text = f"{trl / 1e9:>9.0f}" if layout == "padded" else f"{'-':>9}"
            low, mid = min(seconds[(layout, s)]), statistics.median(seconds[(layout, s)])
            print(f"{layout:<11} {s:>4} {str(tuple(batch.input_ids.shape)):>13} {batch.num_real_tokens:>5} "
                  f"{batch.num_real_tokens / batch.input_ids.numel():>6.0%} {total / 1e9:>6.0f} {low:>6.2f} {mid:>6.2f} "
                  f"{batch.num_real_tokens / low:>13.0f} {total / low / 1e9:>15.1f} {trl_text}")
        print(f"{layout:<11} parts of the last step: " + ", ".join(f"{k} {v / 1e9:.0f} GFLOP" for k, v in parts.items()))

    shapes = {layout: tuple(shapes[(layout, args.steps)].input_ids.shape) for layout in args.layouts}
    h, inter = cfg.hidden_size, cfg.intermediate_size
    m = 2048
    print(f"\nfp32 matmul GFLOP/s on this CPU ({args.threads} threads), M = {m} positions:")
    for k, n in ((h, h), (h, 3 * cfg.num_key_value_heads * (h // cfg.num_attention_heads)), (h, inter), (inter, h), (h, 4096)):
        print(f"  [{m}, {k}] @ [{k}, {n}]: {matmul_gflops(m, k, n):.1f}", flush=True)
    for layout, (rows, width) in shapes.items():
        head_dim = h // cfg.num_attention_heads
        print(f"  attention scores, {layout} [{width}, {head_dim}] @ [{head_dim}, {width}]: {matmul_gflops(width, head_dim, width):.1f}")

    from torch.profiler import ProfilerActivity, profile

    for layout in args.profile_layouts:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            one_step(steps[1], layout)
        print(f"\n=== profile of one {layout} step, grouped by operator (top 15 by self CPU time) ===")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=40))


if __name__ == "__main__":
    main()
