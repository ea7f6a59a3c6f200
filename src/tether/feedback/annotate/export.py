"""Judgements -> the JSONL that ``tether rm train`` and ``tether dpo`` read.

Pairwise projects give preference pairs ``{"prompt", "chosen", "rejected", ...}``; ranking
projects give rankings ``{"prompt", "completions" (best first), ...}``. ``mode="all"`` writes one
row per judgement, keeping the annotator and the time; ``mode="aggregate"`` one row per item:
the majority of the decisive votes for a pair, the mean position (Borda) for a ranking, with the
annotators and the votes. Ties and "both bad" say nothing about which reply is better, so they
are not pairs: they, and items whose votes split evenly, are left out and counted.
"""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path

from tether.feedback.annotate.stats import mean_pairwise_tau


class Mode(str, Enum):
    ALL = "all"
    AGGREGATE = "aggregate"


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _pair_rows_all(items, judgements, skipped):
    for j in judgements:
        if j["choice"] not in ("a", "b"):
            skipped[j["choice"]] += 1
            continue
        c = items[j["item"]]["completions"]
        win = "ab".index(j["choice"])
        yield {
            "prompt": items[j["item"]]["prompt"], "chosen": c[win], "rejected": c[1 - win],
            "item": j["item"], "annotator": j["annotator"], "judged_at": _iso(j["submitted_at"]),
            "reason": j["reason"], "suggestion_shown": j["suggestion_shown"],
        }  # fmt: skip


def _pair_rows_aggregate(items, by_item, skipped):
    for item_id, js in by_item.items():
        votes = {c: sum(j["choice"] == c for j in js) for c in ("a", "b", "tie", "both_bad")}
        if votes["a"] == votes["b"]:
            skipped["split or no decisive vote"] += 1
            continue
        win = 0 if votes["a"] > votes["b"] else 1
        c = items[item_id]["completions"]
        yield {
            "prompt": items[item_id]["prompt"], "chosen": c[win], "rejected": c[1 - win], "item": item_id,
            "annotators": [j["annotator"] for j in js], "votes": votes,
            "judged_at": _iso(max(j["submitted_at"] for j in js)),
        }  # fmt: skip


def _ranking_rows_all(items, judgements, skipped):
    for j in judgements:
        c = items[j["item"]]["completions"]
        yield {
            "prompt": items[j["item"]]["prompt"], "completions": [c[k] for k in j["ranking"]], "item": j["item"],
            "annotator": j["annotator"], "judged_at": _iso(j["submitted_at"]), "reason": j["reason"],
        }  # fmt: skip


def _ranking_rows_aggregate(items, by_item, skipped):
    for item_id, js in by_item.items():
        c = items[item_id]["completions"]
        mean_pos = [sum(j["ranking"].index(k) for j in js) / len(js) for k in range(len(c))]
        order = sorted(range(len(c)), key=lambda k: (mean_pos[k], k))
        yield {
            "prompt": items[item_id]["prompt"], "completions": [c[k] for k in order], "item": item_id,
            "annotators": [j["annotator"] for j in js], "mean_position": [mean_pos[k] for k in order],
            "kendall_tau": mean_pairwise_tau([j["ranking"] for j in js]) if len(js) > 1 else None,
            "judged_at": _iso(max(j["submitted_at"] for j in js)),
        }  # fmt: skip


def export_judgements(store, output: str | Path, mode: Mode | str = Mode.ALL) -> dict:
    """Writes the export to ``output`` (JSONL, replaced atomically); returns
    ``{"rows": n, "kind": "preference"|"ranking", "skipped": {reason: count}}``."""
    mode = Mode(mode)
    items = {it["id"]: it for it in store.items()}
    judgements = store.judgements()
    by_item: dict[int, list[dict]] = defaultdict(list)
    for j in judgements:
        by_item[j["item"]].append(j)
    skipped: dict[str, int] = defaultdict(int)
    pairwise = store.task == "pairwise"
    if mode is Mode.ALL:
        rows = (_pair_rows_all if pairwise else _ranking_rows_all)(items, judgements, skipped)
    else:
        rows = (_pair_rows_aggregate if pairwise else _ranking_rows_aggregate)(items, by_item, skipped)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp")
    n = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    tmp.replace(output)
    return {"rows": n, "kind": "preference" if pairwise else "ranking", "skipped": dict(skipped)}


__all__ = ["Mode", "export_judgements"]
