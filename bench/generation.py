"""Sampling speed: tether's rollout engine vs Hugging Face ``model.generate``, ms per decode step.

    flock /tmp/tether-heavy.lock .venv/bin/python bench/generation.py --rounds 3 --new-tokens 64

Same default model (SmolLM2-135M-Instruct, fp32, CPU), same left-padded chat prompts from the
bundled review prompts, sampling on (temperature 1, no top-k / top-p), both forced to run the
full length (tether: ``stop_at_eos=False``; transformers: ``min_new_tokens = max_new_tokens``).

ms per decode step excludes the prefill: each side is timed generating ``--new-tokens`` N tokens
and generating 1 token (prefill + one sample), and the step time is ``(t_N - t_1) / (N - 1)``.
Sides alternate within a round (the first one swaps each round); the table shows medians over
rounds. ``time_generation`` is the reusable piece (bench/online.py builds on it).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

SIDES = ("tether", "hf")


def bench_prompts(tokenizer, batch: int) -> list[list[int]]:
    """``batch`` chat-templated prompts from the bundled review prompts (cycled if needed)."""
    from tether.data import load_records
    from tether.rollout.engine import encode_prompts

    records = load_records("bundled:review_prompts", kind="prompt").records
    return encode_prompts(tokenizer, [records[i % len(records)].prompt for i in range(batch)])


def _run_hf(model, tokenizer, prompt_ids, new_tokens: int, seed: int) -> int:
    import torch

    from tether.rollout.engine import left_pad, pad_token_id

    pad = pad_token_id(tokenizer)
    input_ids, attention_mask, _ = left_pad(prompt_ids, pad)
    torch.manual_seed(seed)
    out = model.generate(
        input_ids=input_ids, attention_mask=attention_mask, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
        max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=pad,
    )
    return out.shape[1] - input_ids.shape[1]


def _run_tether(model, tokenizer, prompt_ids, new_tokens: int, seed: int, path: str = "auto") -> int:
    import torch

    from tether.rollout.engine import SamplingParams, generate

    params = SamplingParams(max_new_tokens=new_tokens, temperature=1.0, stop_at_eos=False)
    rollout = generate(model, tokenizer, prompt_ids, params, torch.Generator().manual_seed(seed), path=path)
    return rollout.response_ids.shape[1]


RUNNERS = {"tether": _run_tether, "hf": _run_hf}


def time_generation(model, tokenizer, prompt_ids: list[list[int]], new_tokens: int, side: str = "tether", seed: int = 0, **kw) -> float:
    """Wall seconds for one call of ``side``'s generation of ``new_tokens`` tokens per prompt
    (full length, no early stop). Raises if a side stopped early."""
    start = time.perf_counter()
    produced = RUNNERS[side](model, tokenizer, prompt_ids, new_tokens, seed, **kw)
    seconds = time.perf_counter() - start
    if produced != new_tokens:
        raise RuntimeError(f"{side} produced {produced} tokens, expected {new_tokens}")
    return seconds


def ms_per_step(model, tokenizer, prompt_ids, new_tokens: int, side: str, seed: int = 0, **kw) -> float:
    """Decode-step time without the prefill: (t_N - t_1) / (N - 1), in milliseconds."""
    full = time_generation(model, tokenizer, prompt_ids, new_tokens, side, seed, **kw)
    one = time_generation(model, tokenizer, prompt_ids, 1, side, seed, **kw)
    return 1000.0 * (full - one) / (new_tokens - 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sides", nargs="+", default=list(SIDES), choices=SIDES)
    parser.add_argument("--path", default="auto", help="tether decode path: auto, hf, llama_static")
    args = parser.parse_args()

    import torch

    from tether.models import load_model

    torch.set_num_threads(args.threads)
    model, tokenizer = load_model("default")
    model.eval()
    results: dict[tuple[int, str], list[float]] = {}
    for batch in args.batches:
        prompt_ids = bench_prompts(tokenizer, batch)
        for side in args.sides:  # warm-up: allocator, kernels, lazy imports
            time_generation(model, tokenizer, prompt_ids, 4, side, **({"path": args.path} if side == "tether" else {}))
        for r in range(args.rounds):
            order = args.sides if r % 2 == 0 else args.sides[::-1]
            for side in order:
                kw = {"path": args.path} if side == "tether" else {}
                ms = ms_per_step(model, tokenizer, prompt_ids, args.new_tokens, side, seed=r, **kw)
                results.setdefault((batch, side), []).append(ms)
                print(f"batch {batch:3d} round {r} {side:7s} {ms:7.1f} ms/step", flush=True)

    print(f"\nms per decode step, median of {args.rounds} rounds ({args.new_tokens} new tokens, {args.threads} threads, fp32 CPU)")
    print(f"{'batch':>5} " + " ".join(f"{s:>9}" for s in args.sides) + ("   hf/tether" if len(args.sides) == 2 else ""))
    for batch in args.batches:
        medians = {s: statistics.median(results[(batch, s)]) for s in args.sides}
        line = f"{batch:5d} " + " ".join(f"{medians[s]:9.1f}" for s in args.sides)
        if len(args.sides) == 2:
            line += f"   {medians['hf'] / medians['tether']:9.2f}x"
        print(line)


if __name__ == "__main__":
    main()
