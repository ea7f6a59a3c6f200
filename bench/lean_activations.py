"""Activation memory and speed of a training forward+backward, with and without lean activations.

    python bench/lean_activations.py --lock /tmp/tether-heavy.lock
    python bench/lean_activations.py --rows 4 --columns 256 --repeats 3 --lora

Loads the default model (SmolLM2-135M-Instruct, from the cached safetensors), draws ``--rows`` x
``--columns`` random token ids (seeded, the same on both sides) and runs the training loss tether's
trainers use (``forward_token_logprobs``: backbone, then the LM head in chunks on the loss
positions) and its backward, full fine-tuning unless ``--lora``. Each side runs in its own
subprocess so its peak RSS is its own; with ``--lock`` each subprocess runs under ``flock`` on
that file (one heavy job at a time on a shared machine).

Per side it reports:
- saved bytes: distinct storages autograd keeps for backward during one forward
  (``saved_tensors_hooks``), parameters left out; also per token;
- peak RSS (``ru_maxrss``) after loading the model and at the end, and their difference;
- seconds per forward+backward: median of ``--repeats`` after one warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

SEED = 0


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _measure(side: str, rows: int, columns: int, repeats: int, lora: bool) -> dict:
    """One side, in this process: load, patch or not, meter one pass, time the rest."""
    import torch

    from tether.models import apply_lean_activations, apply_lora, forward_token_logprobs, load_model
    from tether.models.lean import SavedTensorMeter

    torch.manual_seed(SEED)
    model, _ = load_model("default")  # float32; the cached safetensors, no conversion
    if lora:
        model = apply_lora(model)
    model.train()
    patched = apply_lean_activations(model) if side == "lean" else 0
    rss_after_load = _peak_rss_mib()

    generator = torch.Generator().manual_seed(SEED)
    input_ids = torch.randint(0, model.config.vocab_size, (rows, columns + 1), generator=generator)  # [R, T + 1]
    batch = SimpleNamespace(
        input_ids=input_ids[:, :-1],  # [R, T]
        target_ids=input_ids[:, 1:],  # [R, T]
        position_ids=torch.arange(columns).expand(rows, columns),  # [R, T]
        attention_mask=torch.ones(rows, columns, dtype=torch.long),  # [R, T]
        loss_mask=torch.ones(rows, columns, dtype=torch.bool),  # [R, T]
    )
    parameters = list(model.parameters())

    def forward_backward(meter=None):
        model.zero_grad(set_to_none=True)
        if meter is None:
            loss = -forward_token_logprobs(model, batch).mean()
        else:
            with meter:
                loss = -forward_token_logprobs(model, batch).mean()
        loss.backward()
        return loss.item()

    meter = SavedTensorMeter(ignore=parameters)
    loss = forward_backward(meter)  # also the warm-up
    saved = {"activation_bytes": meter.activation_bytes, "packed_bytes": meter.packed_bytes, "saves": meter.saves}
    del meter
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        forward_backward()
        seconds.append(time.perf_counter() - start)
    return {
        "side": side,
        "modules_patched": patched,
        "loss": loss,
        "tokens": rows * columns,
        **saved,
        "rss_after_load_mib": rss_after_load,
        "rss_peak_mib": _peak_rss_mib(),
        "seconds": seconds,
        "seconds_median": statistics.median(seconds),
        "threads": torch.get_num_threads(),
    }


def _run_side(side: str, args) -> dict:
    command = [sys.executable, __file__, "--worker", side, "--rows", str(args.rows), "--columns", str(args.columns), "--repeats", str(args.repeats)]
    if args.lora:
        command.append("--lora")
    if args.lock:
        command = ["flock", args.lock, *command]
    env = {k: v for k, v in os.environ.items() if k != "TETHER_CACHE"}  # the default cache: no re-conversion
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{side} side failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _table(plain: dict, lean: dict) -> str:
    mib = 1024 * 1024
    tokens = plain["tokens"]
    rows = [
        ("saved activations (MiB)", plain["activation_bytes"] / mib, lean["activation_bytes"] / mib),
        ("saved activations (KiB/token)", plain["activation_bytes"] / 1024 / tokens, lean["activation_bytes"] / 1024 / tokens),
        ("saved, every save counted (MiB)", plain["packed_bytes"] / mib, lean["packed_bytes"] / mib),
        ("tensors saved", plain["saves"], lean["saves"]),
        ("peak RSS after load (MiB)", plain["rss_after_load_mib"], lean["rss_after_load_mib"]),
        ("peak RSS (MiB)", plain["rss_peak_mib"], lean["rss_peak_mib"]),
        ("peak RSS - after load (MiB)", plain["rss_peak_mib"] - plain["rss_after_load_mib"], lean["rss_peak_mib"] - lean["rss_after_load_mib"]),
        ("seconds / forward+backward", plain["seconds_median"], lean["seconds_median"]),
    ]
    lines = [f"{'':34} {'plain':>12} {'lean':>12} {'lean/plain':>11}"]
    for name, a, b in rows:
        ratio = f"{b / a:.3f}" if a else "-"
        lines.append(f"{name:34} {a:12.1f} {b:12.1f} {ratio:>11}" if isinstance(a, float) else f"{name:34} {a:12d} {b:12d} {ratio:>11}")
    lines.append(
        f"tokens {tokens}, modules patched {lean['modules_patched']}, loss plain {plain['loss']:.6f} lean {lean['loss']:.6f}, "
        f"seconds plain {[round(s, 2) for s in plain['seconds']]} lean {[round(s, 2) for s in lean['seconds']]}, torch threads {plain['threads']}"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=4, help="sequences per batch")
    parser.add_argument("--columns", type=int, default=256, help="tokens per sequence")
    parser.add_argument("--repeats", type=int, default=3, help="timed forward+backward passes after the warm-up")
    parser.add_argument("--lora", action="store_true", help="LoRA adapters on all linear layers instead of full fine-tuning")
    parser.add_argument("--lock", default=None, help="run each side under `flock LOCK` (e.g. /tmp/tether-heavy.lock)")
    parser.add_argument("--order", default="plain,lean", help="which side runs first")
    parser.add_argument("--worker", choices=["plain", "lean"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_measure(args.worker, args.rows, args.columns, args.repeats, args.lora)))
        return
    results = {}
    for side in args.order.split(","):
        results[side] = _run_side(side, args)
        print(json.dumps(results[side]), flush=True)  # raw figures as each side ends, before the table
    print(_table(results["plain"], results["lean"]))


if __name__ == "__main__":
    main()
