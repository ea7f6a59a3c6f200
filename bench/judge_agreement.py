"""How often an AI judge agrees with the gold (VADER) label on held-out sentiment pairs.

The pairs come from ``bundled:review_candidates`` (16 replies of the default model per film-review
prompt): the same held-out quarter of the prompts as ``bench/reward_accuracy.py gold`` (shuffled
with seed 0), every two replies whose VADER compound scores differ by more than ``--min-gap``, at
most ``--pairs-per-prompt`` per prompt. The judge asks each pair in both orders; printed: the
agreement with the gold order (overall and per band of gold gap), ties, the rate at which the two
orders disagree, and how much next-token mass the judge puts on the letters at all.

    flock /tmp/tether-heavy.lock env PYTHONPATH=src OMP_NUM_THREADS=2 .venv/bin/python bench/judge_agreement.py --constitution sentiment
"""

from __future__ import annotations

import argparse
import json
import random
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--constitution", default=None, help="default: the packaged default; 'sentiment' for the task's own")
    parser.add_argument("--min-gap", type=float, default=0.5)
    parser.add_argument("--pairs-per-prompt", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--report", default=None, help="write the figures as JSON here")
    args = parser.parse_args()

    import torch

    from tether.feedback.ai_judge import AIJudge, judge_pairs, load_constitution
    from tether.feedback.sample import load_sample_rows
    from tether.feedback.simulated import gold_pairs
    from tether.models import load_model

    rows = load_sample_rows("bundled:review_candidates")
    random.Random(0).shuffle(rows)
    held_out = rows[: len(rows) // 4]
    pairs = gold_pairs(held_out, min_gap=args.min_gap, max_pairs_per_prompt=args.pairs_per_prompt)
    # gold_pairs puts the gold winner first; show the judge a random side so "always first" cannot score
    rng = random.Random(1)
    items, gold_first = [], []
    for p in pairs:
        swap = rng.random() < 0.5
        items.append((p["prompt"], p["rejected"], p["chosen"]) if swap else (p["prompt"], p["chosen"], p["rejected"]))
        gold_first.append(not swap)
    gaps = torch.tensor([p["gold_chosen"] - p["gold_rejected"] for p in pairs])  # [N] > min_gap

    constitution = load_constitution(args.constitution)
    model, tokenizer = load_model(args.model)
    judge = AIJudge(model, tokenizer, constitution, batch_size=args.batch_size)
    start = time.perf_counter()
    _, report, prob = judge_pairs(judge, items)  # prob: [N] P(first ≻ second), both orders averaged
    seconds = time.perf_counter() - start
    first_wins = torch.tensor(gold_first)  # [N] the gold winner is the first of the item
    decided = prob != 0.5  # [N]
    agree = ((prob > 0.5) == first_wins) & decided  # [N]
    figures = {
        "model": args.model,
        "constitution": constitution.source,
        "prompts": len(held_out),
        "pairs": len(items),
        "min_gap": args.min_gap,
        "agreement": float(agree.sum() / decided.sum().clamp_min(1)),
        "ties": int((~decided).sum()),
        "order_disagreement_rate": report.disagreement_rate,
        "letter_mass": report.letter_mass,
        "seconds": seconds,
    }
    print(
        f"judge {args.model} with {constitution.source}: {len(items)} held-out pairs from {len(held_out)} prompts (VADER gap > {args.min_gap}); "
        f"agreement with VADER {figures['agreement']:.3f} on {int(decided.sum())} decided ({figures['ties']} ties); "
        f"orders disagree on {report.disagreements} ({report.disagreement_rate:.3f}); mean P(A)+P(B) {report.letter_mass:.3f}; {seconds:.0f} s"
    )
    for lo, hi in ((args.min_gap, 1.0), (1.0, 2.1)):
        band = (gaps > lo) & (gaps <= hi) & decided
        if band.any():
            print(f"  gold gap {lo}-{hi}: {int(band.sum())} pairs, agreement {float(agree[band].sum() / band.sum()):.3f}")
    if args.report:
        with open(args.report, "w", encoding="utf-8") as f:
            json.dump(figures, f, indent=2)


if __name__ == "__main__":
    main()
