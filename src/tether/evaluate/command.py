"""`tether eval`: a policy against a reference on held-out prompts; prints a table, writes JSON.

    tether eval --policy runs/grpo/model                       # reference: the model the run started from
    tether eval --policy default --reference default --held-out 32 --reward vader --judge vader --output runs/eval

Prompts: ``--prompts`` (default ``bundled:review_prompts``) with a seeded held-out pick of
``--held-out`` prompts (``--split-seed``, the same pick as the online trainers' ``data.eval_prompts``
with ``data.split_seed``); ``--held-out 0`` takes every prompt of the file. The computation is
``tether.evaluate.policy.evaluate_policy``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

JUDGE_HELP = "a pairwise judge: 'vader', 'module:function' (rewards compared), a reward model / ensemble directory or a preference model directory (tether pm train); repeat for several"


def run_config(model_spec: str) -> dict | None:
    """The ``config.yaml`` of the run that wrote ``model_spec`` (``<run>/model`` beside ``<run>/config.yaml``), if any."""
    import yaml

    path = Path(model_spec).expanduser()
    candidate = path.parent / "config.yaml"
    if path.is_dir() and candidate.is_file():
        loaded = yaml.safe_load(candidate.read_text(encoding="utf-8"))
        return loaded if isinstance(loaded, dict) else None
    return None


def default_reference(policy: str, config: dict | None) -> str:
    """The model the policy's run started from (``model.name_or_path`` of its run config)."""
    base = ((config or {}).get("model") or {}).get("name_or_path")
    if not base:
        raise ValueError(
            f"no --reference given and {policy} has no run config recording its starting model "
            f"(looked for {Path(policy).expanduser().parent / 'config.yaml'}); pass --reference MODEL (or --reference none)"
        )
    return str(base)


def held_out_prompts(path: str, held_out: int, split_seed: int, policy_config: dict | None) -> list:
    """The seeded held-out pick of the online trainers (``trainers.online.load_prompts``); warns when the
    policy's own run trained on some of them."""
    from tether.trainers.online.config import PromptDataConfig
    from tether.trainers.online.rollout import load_prompts

    if held_out <= 0:
        from tether.data import load_records

        prompts = [r.prompt for r in load_records(path, kind="prompt").records]
    else:
        _, prompts = load_prompts(PromptDataConfig(path=path, eval_prompts=held_out, split_seed=split_seed))
        if len(prompts) < held_out:
            print(f"tether eval: warning: {path} holds too few prompts for {held_out} held out; using {len(prompts)}", file=sys.stderr)
    data = (policy_config or {}).get("data") or {}
    if data.get("path") == path:
        trained_held_out, trained_seed = data.get("eval_prompts", 0), data.get("split_seed")
        if held_out <= 0 or trained_seed != split_seed or trained_held_out < held_out:
            print(
                f"tether eval: warning: the policy was trained on {path} holding out {trained_held_out} prompts (split seed {trained_seed}); "
                f"some of these {len(prompts)} evaluation prompts were training prompts (use --held-out {trained_held_out} --split-seed {trained_seed})",
                file=sys.stderr,
            )
    return prompts


def _fmt(x: float | None, digits: int = 3) -> str:
    return "" if x is None else f"{x:.{digits}f}"


def _interval(entry: dict) -> str:
    return f"[{entry['ci_low']:.3f}, {entry['ci_high']:.3f}]" if "ci_low" in entry else ""


def print_eval(result: dict, console=None) -> None:
    """The headline figures as a table: rich styling on a terminal, plain aligned text otherwise."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    plain = not console.is_terminal
    if plain:
        console = Console(file=console.file, width=max(console.width, 120), no_color=True, highlight=False)
    confidence = result.get("settings", {}).get("confidence", 0.95)
    title = f"{result.get('policy', 'policy')} vs {result.get('reference', 'reference')}: {result['prompts']} prompts x {result['samples_per_prompt']}"
    table = Table(title=title, box=box.ASCII2 if plain else box.SIMPLE_HEAD, title_justify="left")
    for column in ("metric", "value", f"{confidence:.0%} interval", "detail"):
        table.add_column(column)
    for name, entry in result["rewards"].items():
        for side in ("policy", "reference", "difference"):
            if side in entry:
                e = entry[side]
                label = "policy - reference" if side == "difference" else side
                table.add_row(f"reward {name} ({label})", f"{e['mean']:.3f} ± {e['stderr']:.3f}", _interval(e), f"std {e['std']:.3f}, n {e['n']}")
    for name, w in result["win_rates"].items():
        detail = f"W/T/L {w['wins']}/{w['ties']}/{w['losses']}"
        if "order_disagreement" in w:
            detail += f", orders disagree {w['order_disagreement']:.2f}"
        ci = w.get("win_rate_ci")
        table.add_row(f"win-rate vs reference ({name})", _fmt(w["win_rate"]), f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "", detail)
        ci = w.get("lc_win_rate_ci")
        table.add_row(f"length-controlled win-rate ({name})", _fmt(w["lc_win_rate"]), f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "", f"length slope {w['lc_length_slope']:.3f}, mean Δlen {w['length_delta_mean']:.1f}")
    if "kl" in result:
        k = result["kl"]
        table.add_row("KL to reference (nats/response)", f"{k['mean']:.3f} ± {k['stderr']:.3f}", _interval(k), "over the policy's samples")
    for side, e in result["length"].items():
        table.add_row(f"length in tokens ({side})", f"{e['mean']:.1f} ± {e['stderr']:.1f}", "", f"std {e['std']:.1f}")
    for side, d in result["diversity"].items():
        table.add_row(f"distinct-1 / distinct-2 ({side})", f"{d['distinct_1']:.3f} / {d['distinct_2']:.3f}", "", "")
    rm = result.get("reward_model")
    if rm:
        table.add_row(f"reward-model accuracy ({rm['model']})", _fmt(rm["accuracy"]), "", f"on {rm['pairs_file']}, {int(rm['pairs'])} pairs; length rule {rm['length_baseline_accuracy']:.3f}")
        table.add_row("reward-model ECE", _fmt(rm["ece"]), "", "")
    console.print(table)
    if result.get("seconds"):
        console.print("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in result["seconds"].items()))


def run_eval(args: argparse.Namespace) -> dict:
    from tether.evaluate.policy import EvalSettings, evaluate_policy, write_eval
    from tether.feedback.judges import load_judge
    from tether.models import load_model
    from tether.rollout.engine import SamplingParams
    from tether.rollout.rewards import load_reward_source

    started = time.perf_counter()
    if (args.pairs is None) != (args.reward_model is None):
        raise ValueError("--pairs and --reward-model go together: reward-model accuracy needs labelled pairs and the model to score them")
    rewards = args.reward if args.reward else ["vader"]
    judges = args.judge if args.judge else ["vader"]
    config = run_config(args.policy)
    reference = args.reference if args.reference is not None else default_reference(args.policy, config)
    if reference == "none":
        if args.judge:
            raise ValueError("--judge compares the policy with a reference; it cannot go with --reference none")
        reference, judges = None, []
        print("tether eval: --reference none: no win-rates and no KL, only the policy's own figures", file=sys.stderr)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    prompts = held_out_prompts(args.prompts, args.held_out, args.split_seed, config)
    sources = {spec: load_reward_source(spec) for spec in rewards}  # named by their spec in the report
    judge_objects = {spec: load_judge(spec) for spec in judges}
    policy, tokenizer = load_model(args.policy)
    ref_model, ref_tokenizer = (None, None)
    if reference is not None:
        ref_model, ref_tokenizer = (policy, tokenizer) if reference == args.policy else load_model(reference)
    loaded = time.perf_counter() - started
    sampling = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k)
    settings = EvalSettings(
        sampling=sampling, samples_per_prompt=args.samples, seed=args.seed, batch_size=args.batch_size,
        bootstrap_rounds=args.bootstrap, confidence=args.confidence, bootstrap_seed=args.bootstrap_seed,
    )
    result = evaluate_policy(policy, tokenizer, prompts, reference=ref_model, reference_tokenizer=ref_tokenizer, reward_sources=sources, judges=judge_objects, settings=settings)
    result = {"policy": args.policy, "reference": reference, "prompts_file": args.prompts, **result}
    if args.pairs is not None:
        from tether.evaluate.reward_model import run_rm_eval

        report = run_rm_eval(args.reward_model, args.pairs)
        result["reward_model"] = {"model": args.reward_model, "pairs_file": args.pairs, **report}
    result["seconds"] = {"loading": round(loaded, 2), **result["seconds"], "total": round(time.perf_counter() - started, 2)}
    print_eval(result)
    if args.output:
        path = write_eval(result, args.output)
        print(f"wrote {path} and {Path(args.output) / 'samples.jsonl'}")
    return result


def _eval_command(args: argparse.Namespace) -> int:
    try:
        run_eval(args)
    except ValueError as e:  # bad specs, missing reference, unknown judge: one line naming what is wrong
        print(f"tether eval: {e}", file=sys.stderr)
        return 1
    return 0


def add_eval_command(sub) -> None:
    """Register ``tether eval`` (called by tether.cli)."""
    e = sub.add_parser(
        "eval",
        help="Evaluate a policy against a reference: reward, win-rate (plain and length-controlled) with intervals, KL, length, diversity.",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    e.add_argument("--policy", default="default", help="the model to evaluate: a model directory, 'default' or 'tiny' (default: default)")
    e.add_argument("--reference", default=None, help="the model to compare with (default: the model the policy's run started from, read from <run>/config.yaml); 'none' for no comparison")
    e.add_argument("--prompts", default="bundled:review_prompts", help="prompts file or bundled:<name> (default: bundled:review_prompts)")
    e.add_argument("--held-out", type=int, default=32, help="prompts in the seeded held-out pick (0: every prompt of the file; default 32)")
    e.add_argument("--split-seed", type=int, default=1234, help="seed of the held-out pick (default 1234, the online trainers' data.split_seed)")
    e.add_argument("--reward", action="append", help="reward source: 'vader', 'module:function' or a reward model / ensemble directory; repeat for several (default: vader)")
    e.add_argument("--judge", action="append", help=JUDGE_HELP + " (default: vader)")
    e.add_argument("--samples", type=int, default=1, help="responses per prompt from each model (default 1)")
    e.add_argument("--seed", type=int, default=0, help="sampling seed of the policy; the reference uses seed + 1 (default 0)")
    e.add_argument("--max-new-tokens", type=int, default=48)
    e.add_argument("--temperature", type=float, default=1.0)
    e.add_argument("--top-p", type=float, default=1.0)
    e.add_argument("--top-k", type=int, default=0)
    e.add_argument("--batch-size", type=int, default=16, help="responses generated per batch")
    e.add_argument("--bootstrap", type=int, default=1000, help="paired bootstrap rounds over prompts (0: no intervals; default 1000)")
    e.add_argument("--confidence", type=float, default=0.95, help="interval coverage (default 0.95)")
    e.add_argument("--bootstrap-seed", type=int, default=0)
    e.add_argument("--pairs", default=None, help="labelled preference pairs or rankings: adds reward-model accuracy and calibration (with --reward-model)")
    e.add_argument("--reward-model", default=None, help="reward model / ensemble directory scored on --pairs")
    e.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    e.add_argument("--output", default=None, help="directory for eval.json and samples.jsonl")
    e.set_defaults(_handler=_eval_command)


__all__ = ["add_eval_command", "default_reference", "held_out_prompts", "print_eval", "run_config", "run_eval"]
