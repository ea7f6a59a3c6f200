"""Reward model against a gold function: VADER sentiment labels pairs of sampled film reviews.

    flock /tmp/tether-heavy.lock python bench/rm_gold.py generate   # once: sample candidates (bundled)
    flock /tmp/tether-heavy.lock python bench/rm_gold.py train      # label, split by prompt, train, evaluate

Held-out pairs come from prompts the reward model never saw. Printed: accuracy against the gold
labels, the length-only baseline on the same pairs, and the ECE of σ(r_c − r_r).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CANDIDATES = REPO / "src/tether/data/bundled/review_candidates.jsonl"


def generate(samples: int, max_new_tokens: int, seed: int) -> None:
    import torch

    from tether.data import load_records
    from tether.data.encode import encode_prompt
    from tether.models import load_model

    torch.manual_seed(seed)
    model, tokenizer = load_model("default")
    model.eval()
    prompts = [r.prompt for r in load_records("bundled:review_prompts").records]
    rows = []
    for prompt in prompts:
        ids = torch.tensor([encode_prompt(tokenizer, prompt)] * samples)  # [S, P], same prompt: no padding
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=1.0, top_p=0.95, max_new_tokens=max_new_tokens)
        texts = [tokenizer.decode(o[ids.shape[1] :], skip_special_tokens=True).strip() for o in out]
        rows.append({"prompt": prompt[-1]["content"], "completions": texts})
        print(len(rows), texts[0][:80], flush=True)
    with open(CANDIDATES, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    print(f"wrote {CANDIDATES} ({CANDIDATES.stat().st_size} bytes)")


def train(args) -> None:
    from tether.config import load_config
    from tether.feedback.simulated import gold_pairs
    from tether.trainers.rm import RMConfig, run_rm_eval, run_rm_train

    rows = [json.loads(line) for line in open(CANDIDATES, encoding="utf-8")]
    random.Random(0).shuffle(rows)
    n_eval = len(rows) // 4
    work = Path(args.output)
    work.mkdir(parents=True, exist_ok=True)
    for name, part in (("train", rows[n_eval:]), ("eval", rows[:n_eval])):
        pairs = gold_pairs(part, min_gap=0.1)
        with open(work / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for p in pairs:
                f.write(json.dumps({"prompt": p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"]}) + "\n")
        print(f"{name}: {len(part)} prompts, {len(pairs)} gold-labelled pairs")
    overrides = [
        f"data.path={work / 'train.jsonl'}",
        f"data.eval_path={work / 'eval.jsonl'}",
        "data.max_length=160",
        f"train.output_dir={work / 'run'}",
        f"train.epochs={args.epochs}",
        "train.batch_size=8",
        "train.micro_batch_size=8",
        f"train.lr={args.lr}",
        "train.save_every=0",
        "train.progress=false",
        f"lora.enabled={str(args.lora).lower()}",
        *args.overrides,
    ]
    run_rm_train(load_config(RMConfig, None, overrides))
    report = run_rm_eval(str(work / "run" / "model"), str(work / "eval.jsonl"), output=str(work / "gold_eval.json"))
    print(json.dumps({k: report[k] for k in ("pairs", "accuracy", "length_baseline_accuracy", "ece")}))


def main() -> None:
    sys.path.insert(0, str(REPO / "src"))
    parser = argparse.ArgumentParser()
    parser.add_argument("action", choices=["generate", "train"])
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="/tmp/tether-rm-gold")
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--lora", action="store_true")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args()
    generate(args.samples, args.max_new_tokens, args.seed) if args.action == "generate" else train(args)


if __name__ == "__main__":
    main()
