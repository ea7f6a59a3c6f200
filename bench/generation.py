"""Sampling speed: tether's rollout engine vs Hugging Face ``model.generate``: ms per decode step
and seconds per whole call.

    flock /tmp/tether-heavy.lock .venv/bin/python bench/generation.py --rounds 3 --new-tokens 64

Same default model (SmolLM2-135M-Instruct, fp32, CPU), same left-padded chat prompts from the
bundled review prompts, sampling on (temperature 1, no top-k / top-p), both forced to run the
full length (tether: ``stop_at_eos=False``; transformers: ``min_new_tokens = max_new_tokens``).

Both sides run in this one process, on one loaded model, one call at a time (nothing else of the
benchmark runs beside a call), after one untimed warm-up call per side and batch. Two figures per
side, both wall-clock around the call (``time.perf_counter``):

* end to end: one whole call generating ``--new-tokens`` N tokens per prompt, from the token ids
  of the prompts to the sampled ids: set-up (padding, masks, caches; tether's compiled decode
  path if it picks one), the prefill and N decode steps, ``t_N``;
* ms per decode step, without the prefill and set-up: the same call generating 1 token (set-up,
  prefill, one sample) is timed too, and the step time is ``(t_N - t_1) / (N - 1)``.

Sides alternate within a round (the first one swaps each round); each side's minimum, median and
maximum over the rounds are printed beside the ratio of medians (peer time / tether time).
``time_generation`` is the reusable piece.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from harness import ROUNDS, alternate, print_summary  # noqa: E402

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


def decode_timing(model, tokenizer, prompt_ids, new_tokens: int, side: str, seed: int = 0, **kw) -> dict[str, float]:
    """``{"ms_per_step": (t_N - t_1) / (N - 1) in ms, "call_s": t_N}``: the decode step without the
    prefill, and one whole call of N tokens (set-up, prefill, decode)."""
    full = time_generation(model, tokenizer, prompt_ids, new_tokens, side, seed, **kw)
    one = time_generation(model, tokenizer, prompt_ids, 1, side, seed, **kw)
    return {"ms_per_step": 1000.0 * (full - one) / (new_tokens - 1), "call_s": full}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sides", nargs="+", default=list(SIDES), choices=SIDES)
    parser.add_argument("--path", default="auto", help="tether decode path: auto, hf, llama_static")
    args = parser.parse_args()
    if args.new_tokens < 2:
        parser.error("--new-tokens must be at least 2 (the step time is (t_N - t_1) / (N - 1))")

    import torch

    from tether.models import load_model

    torch.set_num_threads(args.threads)
    model, tokenizer = load_model("default")
    model.eval()
    results: dict[int, dict[str, list[dict]]] = {}
    for batch in args.batches:
        prompt_ids = bench_prompts(tokenizer, batch)
        results[batch] = {side: [] for side in args.sides}
        for side in args.sides:  # warm-up: allocator, kernels, lazy imports
            time_generation(model, tokenizer, prompt_ids, 4, side, **({"path": args.path} if side == "tether" else {}))
        for r, side in alternate(args.rounds, args.sides):
            kw = {"path": args.path} if side == "tether" else {}
            res = decode_timing(model, tokenizer, prompt_ids, args.new_tokens, side, seed=r, **kw)
            results[batch][side].append(res)
            print(f"batch {batch:3d} round {r + 1} {side:7s} {res['ms_per_step']:7.1f} ms/step {res['call_s']:7.2f} s/call", flush=True)

    ratio = ("hf", "tether") if len(args.sides) == 2 else ("", "")
    for batch in args.batches:
        print(f"\nbatch {batch}, {args.new_tokens} new tokens, {args.threads} threads, fp32 CPU, {args.rounds} rounds:")
        print_summary(results[batch], "ms_per_step", "ms per decode step", ratio, digits=1, memory=False)
        print_summary(results[batch], "call_s", "s per whole call", ratio, digits=2, memory=False)


if __name__ == "__main__":
    main()
