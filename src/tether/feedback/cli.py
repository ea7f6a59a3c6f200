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


def _load_judge_inputs(args):
    from tether.feedback.sample import load_sample_rows

    if not args.samples or not args.output:
        raise ValueError("--samples and --output are required")
    rows = load_sample_rows(args.samples)
    return rows[: args.limit] if args.limit is not None else rows


def _write_report(path, report: dict) -> None:
    import json
    from pathlib import Path

    if path:
        Path(path).write_text(json.dumps(report, indent=2), encoding="utf-8")


@_clear_errors
def _judge(args) -> int:
    from tether.feedback.ai_judge import AIJudge, judge_pairs, load_constitution
    from tether.feedback.sample import prompt_text, sample_pairs, write_jsonl
    from tether.models import load_model

    rows = _load_judge_inputs(args)
    constitution = load_constitution(args.constitution)
    items = sample_pairs(rows, args.pairs_per_prompt, args.seed)
    model, tokenizer = load_model(args.model)
    judge = AIJudge(model, tokenizer, constitution, batch_size=args.batch_size, name=f"ai-judge:{args.model}")
    pairs, report, prob = judge_pairs(judge, items, args.tie_margin)
    write_jsonl(args.output, pairs)
    summary = {
        "pairs": report.pairs,
        "ties": report.ties,
        "written": len(pairs),
        "order_disagreement_rate": report.disagreement_rate,
        "letter_mass": report.letter_mass,
        "constitution": constitution.source,
        "model": args.model,
    }
    print(
        f"judge: {report.pairs} pairs, {report.ties} ties, {len(pairs)} written -> {args.output}; the two orders disagreed on "
        f"{report.disagreements} ({report.disagreement_rate:.3f}); mean P(A)+P(B) of the next token {report.letter_mass:.3f}"
    )
    if args.compare_gold:
        from tether.feedback.simulated import load_gold

        gold = load_gold(args.compare_gold)
        prompts = [prompt_text(p) for p, _, _ in items]
        rewards = gold.score(prompts * 2, [a for _, a, _ in items] + [b for _, _, b in items])["reward"].double()  # [2N]
        gap = rewards[: len(items)] - rewards[len(items) :]  # [N] gold(a) - gold(b)
        clear = gap.abs() > args.gold_margin  # [N] pairs the gold function decides
        decided = clear & ((prob - 0.5).abs() > args.tie_margin)  # [N] ... and the judge too
        agree = ((prob > 0.5) == (gap > 0)) & decided
        summary.update(
            gold=args.compare_gold, gold_margin=args.gold_margin, gold_pairs=int(clear.sum()), judge_decided=int(decided.sum()), agreement=float(agree.sum() / decided.sum().clamp_min(1))
        )
        print(
            f"judge vs gold {args.compare_gold}: {int(clear.sum())} pairs with a gold gap over {args.gold_margin}, "
            f"the judge decided {int(decided.sum())}, agreeing on {int(agree.sum())} ({summary['agreement']:.3f})"
        )
    _write_report(args.report, summary)
    return 0


@_clear_errors
def _revise(args) -> int:
    from tether.feedback.ai_judge import load_constitution, revise
    from tether.feedback.sample import write_jsonl
    from tether.models import load_model

    rows = _load_judge_inputs(args)
    items = [(row["prompt"], c) for row in rows for c in list(dict.fromkeys(row["completions"]))[: args.per_prompt]]
    model, tokenizer = load_model(args.model)
    demos, empty = revise(model, tokenizer, load_constitution(args.constitution), items, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, seed=args.seed)
    write_jsonl(args.output, demos)
    print(f"judge revise: {len(items)} responses critiqued and revised, {len(demos)} demonstrations -> {args.output} ({empty} empty left out)")
    return 0


def _judge_arguments(p, output_help: str) -> None:
    p.add_argument("--samples", help="a `tether sample` file (or any file of prompt + completions rows, e.g. bundled:review_candidates)")
    p.add_argument("--output", help=output_help)
    p.add_argument("--model", default="default", help="the judge: 'default', 'tiny', a model directory or a .gguf file")
    p.add_argument("--constitution", default=None, help="YAML list of principles; default: the packaged one ('sentiment' names another packaged one)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--limit", type=int, default=None, help="only the first N sample rows")
    p.add_argument("--seed", type=int, default=0)


def add_judge_command(sub) -> None:
    p = sub.add_parser(
        "judge",
        help="AI feedback: a local model labels pairs against a constitution (both orders); `judge revise` writes critiqued-and-revised SFT data.",
        description="Label pairs of completions from a `tether sample` file with a local judge model and a constitution (a YAML list of "
        "principles): P(first better) from the next-token probabilities of 'A' and 'B', asked in both orders. Writes pairs "
        "(chosen/rejected/judge_prob) for `tether rm train` and `tether dpo`.",
    )
    _judge_arguments(p, "pairs JSONL to write")
    p.add_argument("--pairs-per-prompt", type=int, default=None, help="at most this many pairs per prompt (a seeded sample)")
    p.add_argument("--tie-margin", type=float, default=0.0, help="|P - 0.5| at most this is a tie, left out")
    p.add_argument("--compare-gold", default=None, help="also report agreement with a gold function (vader, length, keyword=..., module:function)")
    p.add_argument("--gold-margin", type=float, default=0.0, help="with --compare-gold: only pairs whose gold gap exceeds this count")
    p.add_argument("--report", default=None, help="write the figures as JSON here")
    p.set_defaults(_handler=_judge)
    actions = p.add_subparsers(dest="judge_action", metavar="[revise]")
    r = actions.add_parser("revise", help="Constitutional AI's supervised step: critique each completion against a principle, then rewrite it.")
    _judge_arguments(r, "demonstrations JSONL to write (prompt/completion)")
    r.add_argument("--per-prompt", type=int, default=1, help="completions revised per prompt (the first distinct ones)")
    r.add_argument("--max-new-tokens", type=int, default=128)
    r.set_defaults(_handler=_revise)


def add_feedback_commands(sub) -> None:
    add_sample_command(sub)
    add_label_command(sub)
    add_judge_command(sub)


__all__ = ["add_feedback_commands"]
