"""What the admin page shows, computed from the store's items and judgements (read only).

Progress, per-annotator counts and speed, agreement on items several annotators saw (Fleiss'
kappa over all of them, Cohen's kappa per two annotators sharing items; Kendall's tau for
rankings), each with a bootstrap interval over items; the most disputed items; each annotator's
position bias (how often the response shown on the left wins); and how often annotators follow
the AI suggestion when it is shown, against how often they agree with it when it is not.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections import defaultdict

import numpy as np

from tether.feedback.annotate.stats import (
    bootstrap_interval,
    cohen_kappa_codes,
    fleiss_kappa,
    item_agreement,
    mean_pairwise_tau,
)

PAIR_LABELS = ("a", "b", "tie", "both_bad")
MIN_SHARED = 2  # items two annotators must share for a Cohen's kappa
MAX_COHEN_ROWS = 30


def _num(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), 4)


def _figure(units, statistic, n_boot: int, batched: bool = False) -> dict:
    """A statistic with its bootstrap interval; ``batched``: ``units`` is an array and
    ``statistic`` maps [B, n, ...] -> [B]."""
    if len(units) == 0:
        value = math.nan
    else:
        value = float(statistic(np.asarray(units)[None])[0]) if batched else statistic(units)
    lo, hi = bootstrap_interval(units, statistic, n_boot=n_boot, batched=batched)
    return {"value": _num(value), "low": _num(lo), "high": _num(hi), "n": len(units)}


def _prompt_text(prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m.get('role', '?')}: {m.get('content', '')}" for m in prompt)


def _rate(flags: list[bool], n_boot: int) -> dict:
    return _figure(np.array(flags, dtype=float), lambda xs: xs.mean(-1), n_boot, batched=True)


def build_report(store, n_boot: int = 500, top_disputed: int = 10) -> dict:
    items = {it["id"]: it for it in store.items()}
    judgements = store.judgements()
    names = [a.name for a in store.annotators()]
    by_item: dict[int, list[dict]] = defaultdict(list)
    for j in judgements:
        by_item[j["item"]].append(j)

    report = {
        "task": store.task,
        "overlap": store.overlap,
        "progress": {
            "items": len(items),
            "items_complete": sum(len(v) >= store.overlap for v in by_item.values()),
            "judgements": len(judgements),
            "judgements_needed": len(items) * store.overlap,
        },
        "annotators": _annotator_rows(names, judgements, n_boot),
    }
    multi = {i: js for i, js in by_item.items() if len(js) >= 2}
    if store.task == "pairwise":
        report["agreement"] = _pair_agreement(multi, n_boot)
        report["disputed"] = _pair_disputed(multi, items, top_disputed)
        report["ai"] = _ai_follow(judgements, items, n_boot, store.meta.get("judge", ""))
    else:
        report["agreement"] = _ranking_agreement(multi, n_boot)
        report["disputed"] = _ranking_disputed(multi, items, top_disputed)
    return report


def _annotator_rows(names: list[str], judgements: list[dict], n_boot: int) -> list[dict]:
    rows = []
    for name in names:
        mine = [j for j in judgements if j["annotator"] == name]
        seconds = [j["submitted_at"] - j["assigned_at"] for j in mine]
        span_h = (max(j["submitted_at"] for j in mine) - min(j["assigned_at"] for j in mine)) / 3600 if mine else 0.0
        # position bias: of the decisive pairwise choices, the share won by the response shown left
        # (0.5 without bias); of the rankings, the share that put the first-shown reply first (1/K)
        decisive = [j for j in mine if j["choice"] in ("a", "b")]
        first_won = [("ab".index(j["choice"]) == j["display"][0]) for j in decisive]
        first_won += [j["ranking"][0] == j["display"][0] for j in mine if j["ranking"]]
        rows.append(
            {
                "name": name,
                "judgements": len(mine),
                "median_seconds": _num(statistics.median(seconds)) if seconds else None,
                "per_hour": _num(len(mine) / span_h) if span_h > 0 else None,
                "first_shown_wins": _rate(first_won, n_boot),
            }
        )
    return rows


def _pair_counts(js: list[dict]) -> list[int]:
    return [sum(j["choice"] == c for j in js) for c in PAIR_LABELS]


def _pair_agreement(multi: dict[int, list[dict]], n_boot: int) -> dict:
    counts = [_pair_counts(js) for js in multi.values()]
    out = {"fleiss_kappa": _figure(np.array(counts).reshape(-1, len(PAIR_LABELS)), fleiss_kappa, n_boot, batched=True), "cohen_kappa": []}
    labels: dict[str, dict[int, str]] = defaultdict(dict)
    for item_id, js in multi.items():
        for j in js:
            labels[j["annotator"]][item_id] = j["choice"]
    for a, b in itertools.combinations(sorted(labels), 2):
        shared = sorted(set(labels[a]) & set(labels[b]))
        if len(shared) < MIN_SHARED:
            continue
        units = np.array([[PAIR_LABELS.index(labels[a][i]), PAIR_LABELS.index(labels[b][i])] for i in shared])  # [n, 2]
        fig = _figure(units, lambda us: cohen_kappa_codes(us, len(PAIR_LABELS)), n_boot, batched=True)
        out["cohen_kappa"].append({"annotators": [a, b], **fig})
    out["cohen_pairs"] = len(out["cohen_kappa"])
    out["cohen_kappa"] = sorted(out["cohen_kappa"], key=lambda c: -c["n"])[:MAX_COHEN_ROWS]  # the pairs sharing most items
    return out


def _pair_disputed(multi: dict[int, list[dict]], items: dict[int, dict], top: int) -> list[dict]:
    if not multi:
        return []
    ids = list(multi)
    agree = item_agreement(np.array([_pair_counts(multi[i]) for i in ids]))  # [N]
    order = sorted((k for k in range(len(ids)) if agree[k] < 1.0), key=lambda k: (agree[k], ids[k]))[:top]  # unanimous items are not disputed
    return [
        {
            "item": ids[k],
            "prompt": _prompt_text(items[ids[k]]["prompt"]),
            "agreement": _num(agree[k]),
            "votes": dict(zip(PAIR_LABELS, _pair_counts(multi[ids[k]]))),
            "reasons": [j["reason"] for j in multi[ids[k]] if j["reason"]],
        }
        for k in order
    ]


def _ranking_agreement(multi: dict[int, list[dict]], n_boot: int) -> dict:
    taus = [mean_pairwise_tau([j["ranking"] for j in js]) for js in multi.values()]
    # Fleiss' kappa on the completion each annotator ranked first
    tops = []
    for js in multi.values():
        k = len(js[0]["ranking"])
        tops.append([sum(j["ranking"][0] == c for j in js) for c in range(k)])
    same_k = len({len(t) for t in tops}) <= 1
    return {
        "kendall_tau": _figure(np.array(taus), lambda ts: ts.mean(-1), n_boot, batched=True),
        "fleiss_kappa_top": _figure(np.array(tops), fleiss_kappa, n_boot, batched=True) if same_k and tops else None,
    }


def _ranking_disputed(multi: dict[int, list[dict]], items: dict[int, dict], top: int) -> list[dict]:
    scored = sorted((tau, i) for i, js in multi.items() if (tau := mean_pairwise_tau([j["ranking"] for j in js])) < 1.0)[:top]
    return [
        {"item": i, "prompt": _prompt_text(items[i]["prompt"]), "kendall_tau": _num(tau), "rankings": {j["annotator"]: j["ranking"] for j in multi[i]}, "reasons": [j["reason"] for j in multi[i] if j["reason"]]}
        for tau, i in scored
    ]


def _ai_follow(judgements: list[dict], items: dict[int, dict], n_boot: int, judge: str) -> dict | None:
    """Agreement with the AI's pick on decisive choices, split by whether the pick was shown: the
    gap between the two is how much annotators follow the suggestion rather than agree with it."""
    if all(it["suggestion"] is None for it in items.values()):
        return None
    shown, hidden = [], []
    for j in judgements:
        p = items[j["item"]]["suggestion"]
        if p is None or p == 0.5 or j["choice"] not in ("a", "b"):
            continue
        agrees = (j["choice"] == "a") == (p > 0.5)
        (shown if j["suggestion_shown"] else hidden).append(agrees)
    return {"agree_when_shown": _rate(shown, n_boot), "agree_when_hidden": _rate(hidden, n_boot), "judge": judge}


__all__ = ["build_report"]
