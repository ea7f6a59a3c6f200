"""Argument parsers of the feedback commands (`tether sample`, `tether label`, `tether judge`),
kept here so that ``tether.cli`` registers them with one call."""

from __future__ import annotations

import argparse
import functools
import sys


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _clear_errors(handler):
    """A ValueError raised on purpose (bad file, foreign sample file, bad option) as one line, exit 1."""

    @functools.wraps(handler)
    def run(args) -> int:
        try:
            return handler(args)
        except ValueError as e:
            print(f"tether {args.command}: {e}", file=sys.stderr)
            return 1

    return run


@_clear_errors
def _label(args) -> int:
    from tether.feedback.sample import load_sample_rows, write_jsonl
    from tether.feedback.simulated import annotator_pool, label_samples, load_gold

    if not args.labeller.startswith("simulated:"):
        raise ValueError(f"--labeller {args.labeller!r}: expected simulated:GOLD (vader, length, keyword=w1,w2, module:function); the AI judge is `tether judge`")
    gold = load_gold(args.labeller[len("simulated:") :])
    annotators = annotator_pool(gold, args.temperatures, args.tie_margin, args.seed)
    rows, counts = label_samples(
        load_sample_rows(args.samples), annotators, kind=args.format, per_item=args.per_item, max_pairs_per_prompt=args.pairs_per_prompt, seed=args.seed
    )
    write_jsonl(args.output, rows)
    extra = f", {counts['ties']} ties left out, {counts['flipped']} against the gold order" if args.format == "pairs" else ""
    print(f"label: {counts['items']} items, {counts['labels']} labels from {len(annotators)} annotators{extra}; {len(rows)} rows -> {args.output}")
    return 0


def add_label_command(sub) -> None:
    p = sub.add_parser(
        "label",
        help="Label a `tether sample` file with simulated annotators (a gold function plus Bradley-Terry noise).",
        description="Turn a `tether sample` file into preference pairs or rankings that `tether rm train` and `tether dpo` read, "
        "labelled by simulated annotators: P(a > b) = sigmoid((gold(a) - gold(b)) / temperature), a tie when the gap is at most the margin.",
    )
    p.add_argument("--samples", required=True, help="a `tether sample` file (or any file of prompt + completions rows)")
    p.add_argument("--output", required=True, help="JSONL to write")
    p.add_argument("--labeller", default="simulated:vader", help="simulated:GOLD with GOLD vader, length, keyword=w1,w2, module:function or a reward model directory")
    p.add_argument("--temperatures", type=_floats, default=[0.1], help="one Bradley-Terry temperature per annotator, comma-separated (0 = never wrong)")
    p.add_argument("--tie-margin", type=float, default=0.0, help="a gold gap at most this large is a tie")
    p.add_argument("--per-item", type=int, default=1, help="annotators per item (distinct)")
    p.add_argument("--format", choices=["pairs", "rankings"], default="pairs")
    p.add_argument("--pairs-per-prompt", type=int, default=None, help="at most this many pairs per prompt (a seeded sample)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(_handler=_label)


def add_sample_command(sub) -> None:
    from tether.feedback.sample import run_sample

    p = sub.add_parser(
        "sample",
        help="Sample K completions per prompt to JSONL (candidates for feedback); a rerun resumes.",
        description="Sample K completions per prompt from a model through the rollout engine, one JSONL row per prompt "
        "with the sampling settings and a fingerprint of the weights. Rerun the same command to resume a killed run.",
    )
    p.add_argument("--model", default="default", help="'default', 'tiny', a model directory or a .gguf file")
    p.add_argument("--prompts", default="bundled:review_prompts", help="any file tether reads as prompts, or bundled:<name>")
    p.add_argument("--output", required=True, help="JSONL file to write (appended to and resumed if it exists)")
    p.add_argument("--k", type=int, default=4, help="completions per prompt")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=8, help="prompts per engine call (each with K rows)")
    p.add_argument("--limit", type=int, default=None, help="only the first N prompts")
    p.set_defaults(_handler=_clear_errors(run_sample))


def add_feedback_commands(sub) -> None:
    add_sample_command(sub)
    add_label_command(sub)


__all__ = ["add_feedback_commands"]
