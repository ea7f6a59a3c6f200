"""Does a reward model learn the preference, or only the length? Held-out accuracy vs. length alone.

    flock /tmp/tether-heavy.lock python bench/reward_accuracy.py gold          # VADER-labelled film reviews
    flock /tmp/tether-heavy.lock python bench/reward_accuracy.py preferences   # bundled:preferences
    flock /tmp/tether-heavy.lock python bench/reward_accuracy.py generate      # once: re-sample the candidates

Two experiments on the default model, each printing held-out pairwise accuracy, the accuracy of
"the longer reply wins" on the same pairs, and the ECE of σ(r_c − r_r):

* ``gold``: ``bundled:review_candidates`` holds 16 replies the default model sampled for each of
  the 80 ``bundled:review_prompts``. Two replies of a prompt whose VADER compound scores differ
  by more than 0.1 make a pair, the more positive one chosen (a simulated annotator with a known
  gold function); at most ``--pairs-per-prompt`` such pairs are drawn per prompt. Prompts are
  split 3:1 before pairing, so held-out pairs come from prompts the reward model never saw.
  ``--train-on rankings`` trains instead on each training prompt's replies in gold order, one
  Plackett–Luce ranking per prompt. Accuracy is also printed per band of gold gap: close pairs
  are near coin flips for any judge but VADER itself. The recipe measured in the README:

      python bench/reward_accuracy.py gold --train-on rankings --lora --lr 2e-4 --epochs 4 \
          train.batch_size=2 train.micro_batch_size=2
* ``preferences``: the bundled programming-help pairs, 10% held out (``data.eval_fraction``).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CANDIDATES = REPO / "src/tether/data/bundled/review_candidates.jsonl"
KEYS = ("pairs", "accuracy", "length_baseline_accuracy", "ece", "margin_mean")


def generate(samples: int, max_new_tokens: int, seed: int, prompts_per_batch: int = 2) -> None:
    """Sample ``samples`` replies per review prompt with tether's rollout engine (``prompts_per_batch``
    prompts per generation batch) and write them to ``bundled:review_candidates``."""
    import torch

    from tether.data import load_records
    from tether.models import load_model
    from tether.rollout.engine import SamplingParams, encode_prompts
    from tether.rollout.engine import generate as sample

    model, tokenizer = load_model("default")
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=1.0, top_p=0.95)
    prompts = [r.prompt for r in load_records("bundled:review_prompts").records]
    rows = []
    for start in range(0, len(prompts), prompts_per_batch):
        chunk = prompts[start : start + prompts_per_batch]
        with torch.no_grad():
            rollout = sample(model, tokenizer, encode_prompts(tokenizer, [p for p in chunk for _ in range(samples)]), params, generator)
        for i, prompt in enumerate(chunk):
            texts = [t.strip() for t in rollout.texts[i * samples : (i + 1) * samples]]
            rows.append({"prompt": prompt[-1]["content"], "completions": texts})
            print(len(rows), texts[0][:80], flush=True)
    with open(CANDIDATES, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    print(f"wrote {CANDIDATES} ({CANDIDATES.stat().st_size} bytes)")


def _train_and_eval(work: Path, overrides: list[str]) -> dict:
    """Train, then the trainer's own held-out report (what ``tether rm eval`` prints for that file)."""
    from tether.config import load_config
    from tether.trainers.rm import RMConfig, run_rm_train

    run_rm_train(load_config(RMConfig, None, [f"train.output_dir={work / 'run'}", "train.save_every=0", "train.progress=false", *overrides]))
    return json.loads((work / "run" / "eval.json").read_text())


def gold(args) -> dict:
    from tether.feedback.simulated import gold_pairs, gold_rankings

    rows = [json.loads(line) for line in open(CANDIDATES, encoding="utf-8")]
    random.Random(0).shuffle(rows)
    n_eval = len(rows) // 4
    work = Path(args.output) / "gold"
    work.mkdir(parents=True, exist_ok=True)
    for name, part in (("train", rows[n_eval:]), ("eval", rows[:n_eval])):
        shape = args.train_on if name == "train" else "pairs"
        if shape == "rankings":  # whole orders, trained by Plackett-Luce
            examples = [{"prompt": r["prompt"], "completions": r["completions"]} for r in gold_rankings(part)]
        else:
            pairs = gold_pairs(part, min_gap=0.1, max_pairs_per_prompt=args.pairs_per_prompt or None)
            examples = [{"prompt": p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"]} for p in pairs]
        with open(work / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for example in examples:
                f.write(json.dumps(example) + "\n")
        print(f"{name}: {len(part)} prompts, {len(examples)} gold-labelled {shape}")
    eval_pairs = gold_pairs(rows[:n_eval], min_gap=0.1, max_pairs_per_prompt=args.pairs_per_prompt or None)
    overrides = [
        f"data.path={work / 'train.jsonl'}",
        f"data.eval_path={work / 'eval.jsonl'}",
        f"train.epochs={args.epochs}",
        f"train.lr={args.lr}",
        f"lora.enabled={str(args.lora).lower()}",
        *args.overrides,
    ]
    report = _train_and_eval(work, overrides)
    for line in gap_breakdown(work / "run" / "model", eval_pairs):
        print(line)
    return report


def gap_breakdown(model_dir: Path, pairs: list[dict], edges=(0.1, 0.5, 1.0, 2.0)) -> list[str]:
    """Held-out accuracy beside the length rule, per band of gold gap |VADER(chosen) − VADER(rejected)|:
    a pair 0.15 apart is close to a coin flip for any judge but VADER, one 1.5 apart is not."""
    import torch

    from tether.evaluate.reward_metrics import length_baseline_accuracy
    from tether.losses.reward import pairwise_accuracy
    from tether.models.reward_ensemble import RewardEnsemble, load_reward
    from tether.evaluate.reward_model import score_sequences

    model = load_reward(model_dir)
    encoder = model.members[0] if isinstance(model, RewardEnsemble) else model
    prompts = [p["prompt"] for p in pairs]
    chosen = encoder.encode_pairs(prompts, [p["chosen"] for p in pairs])  # (ids, prompt_len) each
    rejected = encoder.encode_pairs(prompts, [p["rejected"] for p in pairs])
    rewards, _ = score_sequences(model, chosen + rejected, batch_size=16)  # [2P], the ensemble mean for an ensemble
    r_chosen, r_rejected = rewards[: len(pairs)], rewards[len(pairs) :]  # [P], [P]
    # Reply tokens as ``tether rm eval`` counts them for its length rule.
    l_chosen = torch.tensor([float(len(ids) - plen) for ids, plen in chosen])  # [P]
    l_rejected = torch.tensor([float(len(ids) - plen) for ids, plen in rejected])  # [P]
    gap = torch.tensor([p["gold_chosen"] - p["gold_rejected"] for p in pairs])  # [P]
    lines = ["gold gap      pairs  accuracy  length rule"]
    for low, high in zip(edges, edges[1:]):
        band = (gap > low) & (gap <= high)
        if band.any():
            lines.append(f"({low}, {high}]  {int(band.sum()):>9}  {float(pairwise_accuracy(r_chosen[band].double(), r_rejected[band].double())):8.3f}  {length_baseline_accuracy(l_chosen[band], l_rejected[band]):11.3f}")
    return lines


def preferences(args) -> dict:
    work = Path(args.output) / "preferences"
    overrides = ["data.path=bundled:preferences", "data.eval_fraction=0.1", f"train.epochs={args.epochs}", f"train.lr={args.lr}", f"lora.enabled={str(args.lora).lower()}", *args.overrides]
    return _train_and_eval(work, overrides)


def main() -> None:
    sys.path.insert(0, str(REPO / "src"))
    parser = argparse.ArgumentParser()
    parser.add_argument("action", choices=["generate", "gold", "preferences"])
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--pairs-per-prompt", type=int, default=16, help="gold: at most this many labelled pairs per prompt (0: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="/tmp/tether-reward-accuracy")
    parser.add_argument("--train-on", choices=["pairs", "rankings"], default="pairs", help="gold: train on pairs (Bradley-Terry) or on each prompt's whole gold order (Plackett-Luce); evaluation is on pairs either way")
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--lora", action="store_true")
    parser.add_argument("overrides", nargs="*", help="more key=value overrides for tether rm train")
    args = parser.parse_intermixed_args()
    if args.action == "generate":
        return generate(args.samples, args.max_new_tokens, args.seed)
    report = (gold if args.action == "gold" else preferences)(args)
    print(f"RESULT {args.action}: " + json.dumps({k: round(report[k], 4) for k in KEYS}))


if __name__ == "__main__":
    main()
