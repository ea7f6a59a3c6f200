"""Simulated annotators: preferences labelled by a known gold function instead of a person.

With a gold reward we can check what a reward model learned: held-out pairs labelled by the gold
function measure accuracy against the truth, not against a noisy annotator. The gold function
here is VADER's compound sentiment score (−1 … 1), so "prefer the more positive reply".
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Sequence
from functools import lru_cache


@lru_cache(maxsize=1)
def _vader():
    try:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    except ImportError as err:
        raise ImportError(
            "the VADER gold judge (reward.source=vader, reward.gold=vader, the grpo_vader/ppo_vader presets) needs the "
            "vaderSentiment package, a dependency of tether that is missing here: pip install vaderSentiment"
        ) from err

    return SentimentIntensityAnalyzer()


def vader_gold(text: str) -> float:
    """VADER compound sentiment of ``text``, in [−1, 1]: the gold reward of the sentiment task."""
    return float(_vader().polarity_scores(text)["compound"])


def label_pair(prompt, completion_a: str, completion_b: str, gold: Callable[[str], float] = vader_gold, min_gap: float = 0.0) -> dict | None:
    """A preference record for two completions of one prompt, the higher gold score chosen.

    Returns ``{"prompt", "chosen", "rejected", "gold_chosen", "gold_rejected"}``, or None when the
    gold scores differ by ``min_gap`` or less (a tie says nothing about which is better).
    """
    score_a, score_b = gold(completion_a), gold(completion_b)
    if abs(score_a - score_b) <= min_gap:
        return None
    (chosen, g_chosen), (rejected, g_rejected) = sorted([(completion_a, score_a), (completion_b, score_b)], key=lambda t: -t[1])
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, "gold_chosen": g_chosen, "gold_rejected": g_rejected}


def gold_pairs(
    candidates: Sequence[dict],
    gold: Callable[[str], float] = vader_gold,
    min_gap: float = 0.05,
    max_pairs_per_prompt: int | None = None,
    seed: int = 0,
) -> list[dict]:
    """Pairs from ``[{"prompt": ..., "completions": [...]}, ...]``: every two completions of a prompt
    whose gold scores differ by more than ``min_gap``, optionally at most ``max_pairs_per_prompt``
    of them (a seeded sample)."""
    rng = random.Random(seed)
    pairs = []
    for row in candidates:
        labelled = [label_pair(row["prompt"], a, b, gold, min_gap) for a, b in itertools.combinations(row["completions"], 2)]
        labelled = [p for p in labelled if p is not None]
        if max_pairs_per_prompt is not None and len(labelled) > max_pairs_per_prompt:
            labelled = rng.sample(labelled, max_pairs_per_prompt)
        pairs += labelled
    return pairs


def gold_rankings(candidates: Sequence[dict], gold: Callable[[str], float] = vader_gold) -> list[dict]:
    """Rankings from ``[{"prompt": ..., "completions": [...]}, ...]``: each row's completions ordered
    best first by gold score (``{"prompt", "completions", "gold_scores"}``), for Plackett–Luce
    training on the whole order instead of pairs drawn from it. Exact duplicates are kept once."""
    rankings = []
    for row in candidates:
        unique = list(dict.fromkeys(row["completions"]))
        scored = sorted(((gold(c), c) for c in unique), key=lambda t: -t[0])
        if len(scored) >= 2:
            rankings.append({"prompt": row["prompt"], "completions": [c for _, c in scored], "gold_scores": [g for g, _ in scored]})
    return rankings


__all__ = ["gold_pairs", "gold_rankings", "label_pair", "vader_gold"]
