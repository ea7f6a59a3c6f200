"""GPU figures: model FLOPs utilisation (MFU) of SFT and DPO steps, and decode tokens/s of the
rollout engine against transformers ``generate`` at batch 64.

    python bench/gpu.py                       # one CUDA GPU, bf16, a ~0.48B Llama-style model
    python bench/gpu.py --device cpu --tiny   # dry run of the same code on a tiny model (CPU, fp32)

Nothing is downloaded: the model is built from a config with random weights (MFU and decode speed
do not depend on the weights), the token ids are random, and the tokenizer is a stand-in that
only reports pad / eos ids. Needs torch and transformers only (tether comes from ../src).

Model (default): Llama-style, hidden 1280, 24 layers, 20 query / 4 key-value heads (head dim 64),
SwiGLU 3456, vocabulary 49152 with tied embeddings: 476M parameters, 413M in the layers.

Training steps run tether's own pieces as ``trainers.offline.fit`` does: the SFT / DPO objective's
summed loss under ``parallel.autocast`` (bf16 compute, float32 master weights), backward divided
by the step's units, gradient clipping and a fused AdamW step, metrics summed on the device and
read once per step. No logging or checkpoints (those are not the hot loop). DPO reads cached
reference log-probs (``dpo.reference: cached``), so a step is the policy's forward and backward
over chosen and rejected sequences.

MFU = achieved model FLOPs / peak. Model FLOPs per token: 6·N (N: parameters of the layers and
the LM head; the embedding lookup is free) + 12·L·H·T (attention scores and values, forward and
backward, T the sequence length), the convention of the PaLM paper, counted for every token fed
(including the prompt tokens whose logits the loss skips). Peak: 989 TFLOP/s dense bf16 on
H100/H200 SXM (``--peak-tflops`` for other parts).

Decode: both sides on a bf16 copy of the model, 64 prompts of random lengths (left-padded),
sampling at temperature 1 without top-k / top-p, all rows forced to the full length. Decode
tokens/s excludes the prefill: each side is timed for N and for 1 new token, and the rate is
64·(N − 1) / (t_N − t_1).

The whole run takes about a minute on one H100/H200 (model build, 2 + 5 steps of each objective,
two generation lengths per side).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import torch  # noqa: E402

PEAK_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0}


class StandInTokenizer:
    """What the rollout engine asks of a tokenizer, for ids from a random model: pad and eos ids,
    no chat template; decoded texts are not needed for speed, so they are empty."""

    chat_template = None

    def __init__(self, pad_id: int, eos_id: int):
        self.pad_token_id, self.eos_token_id = pad_id, eos_id

    def batch_decode(self, ids, skip_special_tokens: bool = True):
        return [""] * len(ids)


def build_model(tiny: bool, device: torch.device):
    from transformers import LlamaConfig, LlamaForCausalLM

    if tiny:
        config = LlamaConfig(vocab_size=259, hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096, tie_word_embeddings=True)
    else:
        config = LlamaConfig(
            vocab_size=49152, hidden_size=1280, intermediate_size=3456, num_hidden_layers=24, num_attention_heads=20, num_key_value_heads=4,
            max_position_embeddings=4096, rope_theta=100000.0, tie_word_embeddings=True,
        )
    config._attn_implementation = "sdpa"  # PyTorch's scaled-dot-product attention (flash / memory-efficient kernels on CUDA)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config)  # float32 master weights
    model.config.use_cache = False
    return model


def count_flop_parameters(model) -> int:
    """Parameters that cost FLOPs per token: everything but the input embedding table (with tied
    embeddings the LM head is that same table, and it does cost FLOPs: counted once)."""
    embed = model.get_input_embeddings().weight
    n = sum(p.numel() for p in model.parameters())
    tied = model.get_output_embeddings().weight is embed
    return n if tied else n - embed.numel()


def flops_per_token(model, seq_len: int) -> float:
    c = model.config
    return 6 * count_flop_parameters(model) + 12 * c.num_hidden_layers * c.hidden_size * seq_len


def random_ids(n: int, vocab: int, generator: torch.Generator) -> list[int]:
    return torch.randint(0, vocab, (n,), generator=generator).tolist()


def timed_steps(model, objective, examples, micro: int, steps: int, warmup: int, device: torch.device) -> float:
    """Seconds per optimiser step (median of ``steps`` after ``warmup``), run as fit's hot loop does."""
    from tether import parallel
    from tether.config import TrainConfig
    from tether.trainers.common import build_optimizer, trainable_parameters
    from tether.trainers.offline import add_sums

    cfg = TrainConfig(lr=1e-5)
    optimizer = build_optimizer(model, cfg)
    params = list(trainable_parameters(model).values())
    units = objective.units(examples)
    times = []
    model.train()
    for step in range(warmup + steps):
        sync(device)
        start = time.perf_counter()
        sums: dict = {}
        for i in range(0, len(examples), micro):
            batch = examples[i : i + micro]
            with parallel.autocast():
                loss_sum, metric_sums = objective.loss(model, batch)
            (loss_sum / units).backward()
            add_sums(sums, loss_sum, metric_sums)
        totals = parallel.sum_metrics(sums)  # the one host sync of a step
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(device)
        if step >= warmup:
            times.append(time.perf_counter() - start)
        if not torch.isfinite(torch.tensor(totals["loss"])):
            raise RuntimeError(f"loss became {totals['loss']}")
    del optimizer
    return sorted(times)[len(times) // 2]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_sft(model, args, device, peak) -> dict:
    from tether.trainers.offline import Example
    from tether.trainers.sft import SFTObjective

    g = torch.Generator().manual_seed(1)
    vocab = model.config.vocab_size
    examples = [Example([(random_ids(args.seq, vocab, g), args.prompt)]) for _ in range(args.batch)]
    objective = SFTObjective(pad_id=0, pack=False, row_tokens=args.seq, chunk_size=args.chunk)
    seconds = timed_steps(model, objective, examples, args.micro, args.steps, args.warmup, device)
    tokens = args.batch * args.seq
    return figures("sft", model, tokens, args.seq, seconds, peak)


def bench_dpo(model, args, device, peak) -> dict:
    from tether.data.layouts import Layout
    from tether.trainers.dpo import PreferenceObjective
    from tether.trainers.offline import Example
    from tether.trainers.reference import ReferencePolicy

    g = torch.Generator().manual_seed(2)
    vocab = model.config.vocab_size
    half = args.seq // 2  # chosen and rejected of one pair: two sequences of seq/2 tokens, sharing their prompt's ids
    examples = []
    for _ in range(args.batch):
        prompt = random_ids(args.prompt, vocab, g)
        chosen, rejected = prompt + random_ids(half - args.prompt, vocab, g), prompt + random_ids(half - args.prompt, vocab, g)
        examples.append(Example([(chosen, args.prompt), (rejected, args.prompt)], {"ref_logps": [-float(half), -float(half)]}))
    reference = ReferencePolicy("cached", model, args.chunk)
    layout = Layout(args.dpo_layout)
    objective = PreferenceObjective("dpo", {"beta": 0.1}, reference, 0, layout, half, args.chunk)
    seconds = timed_steps(model, objective, examples, args.micro, args.steps, args.warmup, device)
    tokens = args.batch * 2 * half  # tokens fed (padded layout: the prompt runs once per sequence)
    if layout is Layout.SHARED_PROMPT:
        tokens -= args.batch * args.prompt
    return figures(f"dpo ({layout.value})", model, tokens, half, seconds, peak)


def figures(name: str, model, tokens: int, seq_len: int, seconds: float, peak: float | None) -> dict:
    achieved = tokens * flops_per_token(model, seq_len) / seconds
    out = {"bench": name, "seconds_per_step": round(seconds, 4), "tokens_per_step": tokens, "tokens_per_second": round(tokens / seconds, 1), "model_tflops": round(achieved / 1e12, 2)}
    if peak:
        out["mfu"] = round(achieved / (peak * 1e12), 4)
    return out


def bench_decode(model, args, device) -> list[dict]:
    from tether.rollout.engine import SamplingParams, generate

    model = model.to(torch.bfloat16) if device.type == "cuda" else model
    model.eval()
    model.config.use_cache = True
    vocab, pad = model.config.vocab_size, 0
    tok = StandInTokenizer(pad_id=pad, eos_id=1)
    g = torch.Generator().manual_seed(3)
    lengths = torch.randint(args.prompt_len // 2, args.prompt_len + 1, (args.decode_batch,), generator=g).tolist()
    prompts = [random_ids(n, vocab - 2, g) for n in lengths]
    prompts = [[t + 2 for t in p] for p in prompts]  # never the pad or eos id

    def run_tether(n: int) -> None:
        gen = torch.Generator(device=device).manual_seed(0)
        generate(model, tok, prompts, SamplingParams(max_new_tokens=n, temperature=1.0, top_p=1.0, top_k=0, stop_at_eos=False), gen)

    width = max(lengths)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1
    ids, mask = ids.to(device), mask.to(device)

    def run_hf(n: int) -> None:
        torch.manual_seed(0)
        model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=True, temperature=1.0, top_k=0, top_p=1.0, pad_token_id=pad, eos_token_id=None)

    results = []
    with torch.no_grad():
        for name, fn in (("tether engine", run_tether), ("transformers generate", run_hf)):
            fn(4)  # warm-up: kernels, allocator
            sync(device)
            t = {}
            for n in (1, args.new_tokens):
                start = time.perf_counter()
                fn(n)
                sync(device)
                t[n] = time.perf_counter() - start
            rate = len(prompts) * (args.new_tokens - 1) / max(t[args.new_tokens] - t[1], 1e-9)
            results.append({"bench": f"decode: {name}", "batch": len(prompts), "new_tokens": args.new_tokens, "seconds": round(t[args.new_tokens], 3), "decode_tokens_per_second": round(rate, 1)})
    results.append({"bench": "decode: speed-up", "tether_over_generate": round(results[0]["decode_tokens_per_second"] / results[1]["decode_tokens_per_second"], 2)})
    return results


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"], help="training compute precision (auto: bf16 on CUDA)")
    p.add_argument("--tiny", action="store_true", help="a tiny model and sizes: a dry run of the code, not a measurement")
    p.add_argument("--batch", type=int, help="sequences (SFT) or pairs (DPO) per optimiser step")
    p.add_argument("--micro", type=int, help="per forward/backward pass")
    p.add_argument("--seq", type=int, help="tokens per SFT sequence; per DPO pair (chosen + rejected)")
    p.add_argument("--prompt", type=int, help="prompt tokens of each sequence (no loss)")
    p.add_argument("--chunk", type=int, default=4096, help="model.chunk_size: rows per chunk of the LM head")
    p.add_argument("--dpo-layout", default="padded", choices=["padded", "shared_prompt", "packed"])
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--decode-batch", type=int, default=64)
    p.add_argument("--prompt-len", type=int, help="longest decode prompt (lengths drawn from half of it up)")
    p.add_argument("--new-tokens", type=int, help="tokens generated per row")
    p.add_argument("--peak-tflops", type=float, help="the device's dense peak in the training dtype (default: known for H100/H200/A100)")
    p.add_argument("--skip", default="", help="comma-separated: sft, dpo, decode")
    args = p.parse_args(argv)
    sizes = {"batch": (4, 16), "micro": (2, 8), "seq": (64, 2048), "prompt": (8, 64), "prompt_len": (16, 256), "new_tokens": (8, 256)}
    for key, (tiny, full) in sizes.items():
        if getattr(args, key) is None:
            setattr(args, key, tiny if args.tiny else full)
    if args.tiny and args.decode_batch == 64:
        args.decode_batch = 4

    from tether import parallel

    device = torch.device(args.device)
    placement = parallel.resolve_placement(str(device), args.dtype)
    parallel.set_placement(placement)
    peak = args.peak_tflops
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    if peak is None and device.type == "cuda":
        peak = next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
        if placement.compute_dtype is None and peak:
            peak = None  # the table is bf16 peaks
    started = time.perf_counter()
    model = build_model(args.tiny, device)
    header = {"device": name, "torch": torch.__version__, "compute": str(placement.compute_dtype or torch.float32), "parameters": sum(q.numel() for q in model.parameters()), "flop_parameters": count_flop_parameters(model), "peak_tflops": peak}
    print(json.dumps(header), flush=True)
    skip = set(filter(None, args.skip.split(",")))
    rows = []
    if "sft" not in skip:
        rows.append(bench_sft(model, args, device, peak))
        print(json.dumps(rows[-1]), flush=True)
    if "dpo" not in skip:
        rows.append(bench_dpo(model, args, device, peak))
        print(json.dumps(rows[-1]), flush=True)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if "decode" not in skip:
        for row in bench_decode(model, args, device):
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"\n{'bench':<32} figures   (total {time.perf_counter() - started:.0f} s on {name})")
    for row in rows:
        rest = ", ".join(f"{k} {v}" for k, v in row.items() if k != "bench")
        print(f"{row['bench']:<32} {rest}")


if __name__ == "__main__":
    main()
