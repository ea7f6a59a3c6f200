"""Simulated annotators: preferences labelled by a known gold function instead of a person.

With a gold reward we can check what a reward model learned: held-out pairs labelled by the gold
function measure accuracy against the truth, not against a noisy annotator. The sentiment task's
gold function is VADER's compound sentiment score (−1 … 1), so "prefer the more positive reply".

``SimulatedAnnotator`` makes the gold function a noisy person: a Bradley–Terry model with a
temperature τ says P(a ≻ b) = σ((g(a) − g(b)) / τ), the annotator draws a hard label from it
(so on a gold gap Δ it picks the worse reply with probability σ(−|Δ|/τ)), and calls a tie when
the gap is at most its margin. Several annotators with their own τ make a pool. Each is a
pairwise judge (``feedback.judges.PairJudge``); ``label_samples`` turns a ``tether sample`` file
into the pair or ranking rows ``tether rm train`` and ``tether dpo`` read (``tether label``).
"""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Callable, Sequence
from functools import lru_cache

import torch


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


# ---- gold functions as reward sources ---------------------------------------------------------


def _word_count(prompt: str, response: str) -> float:
    return float(len(response.split()))


def keyword_gold(words: Sequence[str]):
    """A reward source counting whole-word, case-insensitive occurrences of ``words`` in the reply."""
    from tether.rollout.rewards import FunctionReward

    words = [w.strip() for w in words if w.strip()]
    if not words:
        raise ValueError("a keyword gold needs at least one word, e.g. keyword=great,wonderful")
    pattern = re.compile(r"\b(?:" + "|".join(re.escape(w) for w in words) + r")\b", re.IGNORECASE)
    return FunctionReward(lambda prompt, response: float(len(pattern.findall(response))), name="keyword=" + ",".join(words))


def load_gold(spec: str):
    """A gold function as a reward source (``.score(prompts, responses)["reward"]``): ``vader``;
    ``length`` (words in the reply); ``keyword=w1,w2`` (occurrences of those words); or anything
    ``tether.rollout.rewards.load_reward_source`` takes (``module:function`` of (prompt, reply),
    a saved reward model directory)."""
    from tether.rollout.rewards import FunctionReward, load_reward_source

    if spec == "length":
        return FunctionReward(_word_count, name="length")
    if spec.startswith("keyword="):
        return keyword_gold(spec[len("keyword=") :].split(","))
    return load_reward_source(spec)


# ---- noisy annotators --------------------------------------------------------------------------


class SimulatedAnnotator:
    """A gold function with Bradley–Terry noise at temperature ``temperature`` (0: always right) and
    ties when the gold gap is at most ``tie_margin``. Called as a judge it gives P(first ≻ second)
    (0.5 on a tie); ``label`` draws the hard verdicts (1 first, 0 second, 0.5 tie) from that
    probability with the annotator's own seeded generator."""

    def __init__(self, gold, temperature: float, tie_margin: float = 0.0, seed: int = 0, name: str | None = None):
        if temperature < 0 or tie_margin < 0:
            raise ValueError(f"temperature and tie_margin must be >= 0, got {temperature} and {tie_margin}")
        self.gold = gold
        self.temperature = float(temperature)
        self.tie_margin = float(tie_margin)
        self.name = name or f"sim(tau={temperature:g})"
        self.generator = torch.Generator().manual_seed(seed)

    def gaps(self, prompts: Sequence[str], first: Sequence[str], second: Sequence[str]) -> torch.Tensor:
        """g(first) − g(second) -> [B]."""
        from tether.feedback.judges import _check

        _check(prompts, first, second)
        rewards = self.gold.score(list(prompts) * 2, list(first) + list(second))["reward"].double()  # [2B]
        return rewards[: len(first)] - rewards[len(first) :]  # [B]

    def prob_from_gap(self, gap: torch.Tensor) -> torch.Tensor:
        """[B] gold gaps -> [B] P(first ≻ second): σ(gap / τ), a step at τ = 0, 0.5 within the tie margin."""
        prob = torch.sigmoid(gap / self.temperature) if self.temperature > 0 else (gap > 0).double()  # [B]
        return torch.where(gap.abs() <= self.tie_margin, torch.full_like(prob, 0.5), prob)

    def __call__(self, prompts: list[str], first: list[str], second: list[str]) -> torch.Tensor:
        return self.prob_from_gap(self.gaps(prompts, first, second)).float()

    def label_from_gap(self, gap: torch.Tensor) -> torch.Tensor:
        prob = self.prob_from_gap(gap)  # [B]
        draws = torch.rand(prob.shape, generator=self.generator, dtype=torch.float64)  # [B]
        label = (draws < prob).double()  # [B] 1: first preferred
        return torch.where(gap.abs() <= self.tie_margin, torch.full_like(label, 0.5), label)

    def label(self, prompts: list[str], first: list[str], second: list[str]) -> torch.Tensor:
        """Hard labels [B]: 1.0 first preferred, 0.0 second, 0.5 tie."""
        return self.label_from_gap(self.gaps(prompts, first, second))

    def rank(self, prompt: str, completions: Sequence[str]) -> list[int]:
        """A noisy order of ``completions`` (indices, best first): Plackett–Luce with scores g/τ,
        drawn by sorting g/τ plus Gumbel noise, the ranking form of the same Bradley–Terry model
        (exact gold order at τ = 0)."""
        scores = self.gold.score([prompt] * len(completions), list(completions))["reward"].double()  # [K]
        if self.temperature > 0:
            uniform = torch.rand(scores.shape, generator=self.generator, dtype=torch.float64).clamp_min(1e-300)  # [K]
            scores = scores / self.temperature - torch.log(-torch.log(uniform))  # [K] + Gumbel(0, 1)
        return torch.argsort(scores, descending=True, stable=True).tolist()


def annotator_pool(gold, temperatures: Sequence[float], tie_margin: float = 0.0, seed: int = 0) -> list[SimulatedAnnotator]:
    """One annotator per temperature, each with its own random stream, named ``sim<i>(tau=…)``."""
    return [SimulatedAnnotator(gold, t, tie_margin, seed=seed * 1000 + i, name=f"sim{i}(tau={t:g})") for i, t in enumerate(temperatures)]


def label_samples(
    rows: Sequence[dict],
    annotators: Sequence[SimulatedAnnotator],
    *,
    kind: str = "pairs",
    per_item: int = 1,
    max_pairs_per_prompt: int | None = None,
    seed: int = 0,
) -> tuple[list[dict], dict]:
    """Label the rows of a ``tether sample`` file: each item (a pair of two completions, or a
    prompt's whole set for ``kind="rankings"``) goes to ``per_item`` distinct annotators drawn at
    random, and every label is one output row with the annotator's name. Ties are left out of the
    pairs (they say nothing a pair file can hold) and counted. Returns ``(rows, counts)``."""
    from tether.feedback.sample import prompt_text, sample_pairs

    if not 1 <= per_item <= len(annotators):
        raise ValueError(f"per_item must be between 1 and the {len(annotators)} annotators, got {per_item}")
    rng = random.Random(seed)
    out, counts = [], {"items": 0, "labels": 0, "ties": 0, "flipped": 0}
    if kind == "rankings":
        for row in rows:
            unique = list(dict.fromkeys(row["completions"]))
            if len(unique) < 2:
                continue
            counts["items"] += 1
            for annotator in rng.sample(list(annotators), per_item):
                order = annotator.rank(prompt_text(row["prompt"]), unique)
                out.append({"prompt": row["prompt"], "completions": [unique[i] for i in order], "annotator": annotator.name})
                counts["labels"] += 1
        return out, counts
    if kind != "pairs":
        raise ValueError(f"kind must be 'pairs' or 'rankings', got {kind!r}")
    items = sample_pairs(rows, max_pairs_per_prompt, seed)
    counts["items"] = len(items)
    assignment = [rng.sample(range(len(annotators)), per_item) for _ in items]
    verdicts: dict[tuple[int, int], tuple[float, float]] = {}  # (item, annotator) -> (gold gap, label)
    for a, annotator in enumerate(annotators):
        mine = [i for i, who in enumerate(assignment) if a in who]
        if mine:
            gap = annotator.gaps([prompt_text(items[i][0]) for i in mine], [items[i][1] for i in mine], [items[i][2] for i in mine])  # [M]
            verdicts.update({(i, a): (g, lab) for i, g, lab in zip(mine, gap.tolist(), annotator.label_from_gap(gap).tolist())})
    for i, (prompt, x, y) in enumerate(items):
        for a in assignment[i]:
            gap, lab = verdicts[(i, a)]
            counts["labels"] += 1
            if lab == 0.5:
                counts["ties"] += 1
                continue
            counts["flipped"] += int((lab == 1.0) != (gap > 0))  # against the gold order
            chosen, rejected = (x, y) if lab == 1.0 else (y, x)
            out.append({"prompt": prompt, "chosen": chosen, "rejected": rejected, "annotator": annotators[a].name, "gold_gap": gap if lab == 1.0 else -gap})
    return out, counts


__all__ = [
    "SimulatedAnnotator",
    "annotator_pool",
    "gold_pairs",
    "gold_rankings",
    "keyword_gold",
    "label_pair",
    "label_samples",
    "load_gold",
    "vader_gold",
]
