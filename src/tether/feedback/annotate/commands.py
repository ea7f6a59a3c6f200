"""`tether annotate create | add-annotator | add-admin | serve | export | report`.

Heavy parts (torch for the judge and the ensemble, starlette and uvicorn for serving) are imported
inside the handlers, so building the parser stays cheap.
"""

from __future__ import annotations

import importlib
import inspect
import itertools
import json
import random
import sys
import time
from pathlib import Path

from tether.data.errors import DataError

TASKS = ("pairwise", "ranking")


def read_samples(path: str | Path) -> list[dict]:
    """Rows of a ``tether sample`` file: ``{"prompt", "completions": [≥2 texts], ...}``, each with
    ``source_line``. Any other row is a DataError naming the line."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:
                raise DataError(str(path), line_no, None, f"not valid JSON ({e})") from None
            if not isinstance(row, dict):
                raise DataError(str(path), line_no, None, "each line must be a JSON object")
            prompt = row.get("prompt")
            if not (isinstance(prompt, str) and prompt.strip()) and not (isinstance(prompt, list) and prompt and all(isinstance(m, dict) and "content" in m for m in prompt)):
                raise DataError(str(path), line_no, "prompt", "text or a list of chat messages is required")
            comps = row.get("completions")
            if not isinstance(comps, list) or len(comps) < 2 or not all(isinstance(c, str) for c in comps):
                raise DataError(str(path), line_no, "completions", "a list of at least 2 texts is required")
            rows.append({**row, "source_line": line_no})
    if not rows:
        raise DataError(str(path), None, None, "no samples in the file")
    return rows


def load_judge(spec: str, temperature: float = 0.0):
    """A ``PairJudge`` from ``spec``: ``module:attr`` naming a judge (an object or class with
    ``__call__(prompts, first, second)`` and ``name``), or anything ``tether.feedback.judges.load_judge``
    reads (a reward source compared by ``RewardJudge``, or a preference model directory)."""
    from tether.feedback import judges

    if ":" in spec and not Path(spec).exists():
        module, _, attr = spec.partition(":")
        obj = getattr(importlib.import_module(module), attr)
        if inspect.isclass(obj) and not hasattr(obj, "score"):
            obj = obj()
        if callable(obj) and hasattr(obj, "name") and not hasattr(obj, "score"):
            return obj
    return judges.load_judge(spec, temperature=temperature)


def build_items(rows: list[dict], task: str, pairs_per_prompt: int, seed: int, member_scores=None, rule: str = "disagreement") -> list[dict]:
    """Items from sample rows. Pairwise: ``pairs_per_prompt`` pairs per row, the ones the ensemble is
    least sure of when ``member_scores`` [M, rows, K] is given, else a seeded random choice.
    Ranking: one item per row. Items carry their active-selection priority (0 without scores)."""
    from tether.feedback.annotate.select import priorities

    rng = random.Random(seed)
    items = []
    for r, row in enumerate(rows):
        k = len(row["completions"])
        if task == "ranking":
            prio = float(priorities(member_scores[:, r : r + 1, :], rule)[0]) if member_scores is not None else 0.0
            items.append({"prompt": row["prompt"], "completions": row["completions"], "source_line": row["source_line"], "sample_indices": list(range(k)), "priority": prio})
            continue
        pairs = list(itertools.combinations(range(k), 2))
        if member_scores is not None:
            prio = priorities(member_scores[:, r, :][:, list(itertools.chain(*pairs))].reshape(member_scores.shape[0], len(pairs), 2), rule)  # [P]
            ranked = sorted(range(len(pairs)), key=lambda p: (-float(prio[p]), p))[:pairs_per_prompt]
            chosen = [(pairs[p], float(prio[p])) for p in ranked]
        else:
            chosen = [(p, 0.0) for p in rng.sample(pairs, min(pairs_per_prompt, len(pairs)))]
        for (i, j), prio in chosen:
            items.append({"prompt": row["prompt"], "completions": [row["completions"][i], row["completions"][j]], "source_line": row["source_line"], "sample_indices": [i, j], "priority": prio})
    return items


def _create(args) -> int:
    from tether.feedback.annotate.store import Store

    if args.overlap < 1:
        raise ValueError(f"--overlap must be at least 1, got {args.overlap}")
    if not 0.0 <= args.suggest_fraction <= 1.0:
        raise ValueError(f"--suggest-fraction must be in [0, 1], got {args.suggest_fraction}")
    if args.judge and args.task != "pairwise":
        raise ValueError("--judge suggestions apply to pairwise projects only")
    rows = read_samples(args.samples)
    member_scores = None
    if args.ensemble:
        from tether.feedback.annotate.select import ensemble_member_scores
        from tether.models.reward_ensemble import RewardEnsemble

        ensemble = RewardEnsemble.from_pretrained(args.ensemble)
        member_scores = ensemble_member_scores(ensemble, [r["prompt"] for r in rows], [r["completions"] for r in rows])  # [M, rows, K]
    items = build_items(rows, args.task, args.pairs_per_prompt, args.seed, member_scores, args.select)
    meta = {
        "task": args.task, "overlap": args.overlap, "lease_seconds": args.lease_minutes * 60.0, "samples": str(args.samples),
        "created": time.time(), "pairs_per_prompt": args.pairs_per_prompt, "selection": args.select if args.ensemble else None,
        "ensemble": args.ensemble, "suggest_fraction": args.suggest_fraction,
        "model_fingerprints": sorted({str(r.get("model_fingerprint")) for r in rows if r.get("model_fingerprint") is not None}),
    }  # fmt: skip
    if args.judge:
        judge = load_judge(args.judge, args.judge_temperature)
        probs = judge([it["prompt"] for it in items], [it["completions"][0] for it in items], [it["completions"][1] for it in items])  # [N]
        for it, p in zip(items, probs.tolist()):
            it["suggestion"] = float(p)
        meta["judge"] = getattr(judge, "name", args.judge)
    Store.create(args.project, meta, items)
    print(f"created {args.project}: {len(items)} {args.task} items from {len(rows)} prompts of {args.samples}, each for {args.overlap} annotator(s)")
    if args.judge:
        print(f"  AI suggestions from {meta['judge']}, shown on a random {args.suggest_fraction:.0%} of assignments")
    if args.ensemble:
        print(f"  items ordered by ensemble {args.select} ({args.ensemble})")
    print(f"next: tether annotate add-annotator NAME --project {args.project}")
    return 0


def _add_annotator(args, admin: bool = False) -> int:
    from tether.feedback.annotate.store import Store

    store = Store(args.project)
    is_admin = admin or args.admin
    token = store.add_annotator(args.name, admin=is_admin)
    page = "admin" if is_admin else ""
    print(f"{'admin' if is_admin else 'annotator'} {args.name} added to {args.project}. Private link (shown once; share it only with {args.name}):")
    print(f"  {args.url.rstrip('/')}/{page}#token={token}")
    if is_admin:
        print(f"  (the same token also annotates: {args.url.rstrip('/')}/#token={token})")
    return 0


def _serve(args) -> int:
    from tether.feedback.annotate.app import serve

    serve(args.project, args.host, args.port)
    return 0


def _export(args) -> int:
    from tether.feedback.annotate.export import export_judgements
    from tether.feedback.annotate.store import Store

    result = export_judgements(Store(args.project), args.output, args.mode)
    print(f"wrote {result['rows']} {result['kind']} rows ({args.mode}) to {args.output}")
    for why, n in sorted(result["skipped"].items()):
        print(f"  left out {n} ({why}): not a preference between the two replies", file=sys.stderr)
    return 0


def _report(args) -> int:
    from tether.feedback.annotate.report import build_report
    from tether.feedback.annotate.store import Store

    print(json.dumps(build_report(Store(args.project)), indent=2, ensure_ascii=False))
    return 0


def _guarded(handler):
    def run(args) -> int:
        try:
            return handler(args)
        except (ValueError, FileExistsError, FileNotFoundError) as e:  # DataError is a ValueError
            print(f"tether annotate: {e}", file=sys.stderr)
            return 1

    return run


def add_annotate_commands(sub) -> None:
    a = sub.add_parser("annotate", help="Annotation web app: people compare or rank sampled completions.", description="The annotation web app: create a project from a `tether sample` file, add annotators (each gets a private link), serve it, export pairs or rankings for `tether rm train` / `tether dpo`.")
    asub = a.add_subparsers(dest="annotate_command", metavar="<action>", required=True)

    c = asub.add_parser("create", help="Create a project from a `tether sample` file.")
    c.add_argument("--samples", required=True, help="JSONL rows {prompt, completions: [...]}, as `tether sample` writes")
    c.add_argument("--project", required=True, help="project directory (created)")
    c.add_argument("--task", choices=TASKS, default="pairwise")
    c.add_argument("--overlap", type=int, default=1, help="annotators per item (agreement needs 2+)")
    c.add_argument("--pairs-per-prompt", type=int, default=1, help="pairwise: how many pairs of each prompt's completions to ask about")
    c.add_argument("--lease-minutes", type=float, default=30.0, help="how long an item stays reserved for the annotator it was handed to")
    c.add_argument("--judge", help="AI suggestions: 'vader', module:function, a reward model directory, or module:attr naming a pair judge")
    c.add_argument("--judge-temperature", type=float, default=0.0, help="reward judges: 0 = hard verdicts, >0 = Bradley-Terry probability")
    c.add_argument("--suggest-fraction", type=float, default=1.0, help="share of assignments that show the AI suggestion (the rest measure agreement without it)")
    c.add_argument("--ensemble", help="reward-model ensemble directory: show the items its members disagree on first")
    c.add_argument("--select", choices=["disagreement", "even"], default="disagreement", help="with --ensemble: member disagreement, or mean prediction closest to even")
    c.add_argument("--seed", type=int, default=0)
    c.set_defaults(_handler=_guarded(_create))

    for name, admin in (("add-annotator", False), ("add-admin", True)):
        p = asub.add_parser(name, help=f"Add {'an admin' if admin else 'an annotator'} and print their private link.")
        p.add_argument("name")
        p.add_argument("--project", required=True)
        p.add_argument("--url", default="http://127.0.0.1:8765", help="where the server is reached, for the link")
        if not admin:
            p.add_argument("--admin", action="store_true", help="also allowed on the admin page")
        p.set_defaults(_handler=_guarded(lambda args, admin=admin: _add_annotator(args, admin)), admin=admin)

    s = asub.add_parser("serve", help="Serve the project (127.0.0.1 unless --host says otherwise).")
    s.add_argument("--project", required=True)
    s.add_argument("--host", default="127.0.0.1", help="address to bind; anything but loopback prints a warning")
    s.add_argument("--port", type=int, default=8765)
    s.set_defaults(_handler=_guarded(_serve))

    e = asub.add_parser("export", help="Write pairs or rankings for `tether rm train` / `tether dpo`.")
    e.add_argument("--project", required=True)
    e.add_argument("--output", required=True, help="JSONL file")
    e.add_argument("--mode", choices=["all", "aggregate"], default="all", help="every label (with annotator and time) or one aggregated label per item")
    e.set_defaults(_handler=_guarded(_export))

    r = asub.add_parser("report", help="Print the admin page's figures as JSON.")
    r.add_argument("--project", required=True)
    r.set_defaults(_handler=_guarded(_report))


__all__ = ["add_annotate_commands", "build_items", "load_judge", "read_samples"]
