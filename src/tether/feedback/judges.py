"""Pairwise judges: one interface for everything that says which of two responses is better.

A judge is called as ``judge(prompts, first, second) -> Tensor [B]`` holding P(first ≻ second)
for each of B (prompt, first, second) triples, in [0, 1]; 0.5 is a tie. The same objects serve
``tether eval`` (win-rates), online and iterative DPO (labelling fresh samples), the annotation
app's AI suggestions and ``rollout.rewards.PreferenceModelReward`` (win probability as a reward).

Implementations: ``RewardJudge`` here (any reward source: the gold function, a reward model or
ensemble), the AI judge (``feedback.ai_judge``) and the pairwise preference model
(``models.preference.PreferenceJudge``). ``both_orders`` asks a judge in the two orders and
reports where they disagree, which cancels a position bias. A judge whose verdict cannot depend on
the order (a comparison of two rewards; a preference model, antisymmetric by construction) says so
with ``order_invariant = True``; ``tether eval`` asks it once and every other judge in both
orders. ``load_judge(spec)`` builds one from a string.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class PairJudge(Protocol):
    name: str

    def __call__(self, prompts: list[str], first: list[str], second: list[str]) -> torch.Tensor: ...


def _check(prompts, first, second) -> None:
    if not (len(prompts) == len(first) == len(second)):
        raise ValueError(f"a judge needs as many prompts as pairs: {len(prompts)} prompts, {len(first)} first, {len(second)} second")


class RewardJudge:
    """A reward source as a judge: compare the two responses' rewards.

    ``temperature=0`` gives hard verdicts: 1 when the first scores higher by more than ``tie_margin``,
    0 when the second does, 0.5 otherwise. ``temperature>0`` gives the Bradley–Terry probability
    ``sigmoid((r_first - r_second) / temperature)`` (ties do not apply then).

    ``order_invariant``: swapping the two responses gives exactly 1 − the verdict, so ``tether
    eval`` asks it once, where it asks any other judge in both orders (see ``tether.evaluate.winrate``).
    """

    order_invariant = True

    def __init__(self, source, temperature: float = 0.0, tie_margin: float = 0.0, name: str | None = None):
        if temperature < 0 or tie_margin < 0:
            raise ValueError(f"temperature and tie_margin must be >= 0, got {temperature} and {tie_margin}")
        if temperature > 0 and tie_margin > 0:
            raise ValueError("tie_margin applies only to hard verdicts (temperature=0); set one of them")
        self.source = source
        self.temperature = temperature
        self.tie_margin = tie_margin
        self.name = name or getattr(source, "name", "reward")

    def __call__(self, prompts: list[str], first: list[str], second: list[str]) -> torch.Tensor:
        _check(prompts, first, second)
        rewards = self.source.score(list(prompts) * 2, list(first) + list(second))["reward"]  # [2B]
        gap = rewards[: len(first)] - rewards[len(first) :]  # [B]
        if self.temperature > 0:
            return torch.sigmoid(gap / self.temperature)
        verdict = torch.full_like(gap, 0.5)  # [B]
        verdict[gap > self.tie_margin] = 1.0
        verdict[gap < -self.tie_margin] = 0.0
        return verdict


@dataclass
class BothOrders:
    """Verdicts asked in both orders: ``prob`` [B] is (P(a≻b) + 1 − P(b≻a)) / 2 and ``disagree`` [B]
    is True where the two orders picked different winners (one above 0.5, the other, read for the
    same response, below it)."""

    prob: torch.Tensor
    disagree: torch.Tensor


def both_orders(judge: PairJudge, prompts: list[str], first: list[str], second: list[str]) -> BothOrders:
    forward = judge(prompts, first, second).float()  # [B] P(first ≻ second)
    backward = 1.0 - judge(prompts, second, first).float()  # [B] the same event, asked swapped
    disagree = (forward - 0.5) * (backward - 0.5) < 0
    return BothOrders(prob=(forward + backward) / 2, disagree=disagree)


JUDGE_SPECS = (
    "'vader' (VADER sentiment of each reply, compared)",
    "'module:function' (a reward function or RewardSource object/class, its rewards compared)",
    "a saved reward model or reward ensemble directory (its rewards compared)",
    "a saved pairwise preference model directory (tether pm train: P(first beats second) itself)",
)


def load_judge(spec: str, *, temperature: float = 0.0, tie_margin: float = 0.0, **source_kw) -> PairJudge:
    """A pairwise judge from a string. The directory of a saved pairwise preference model is a
    ``PreferenceJudge`` (it gives probabilities itself: ``temperature``, ``tie_margin`` and reward
    keywords do not apply and are an error). Every other spec is a reward source
    (``tether.rollout.rewards.load_reward_source``) wrapped in a ``RewardJudge``; ``temperature``
    and ``tie_margin`` are the RewardJudge's, other keywords go to the reward source.
    Anything else is an error listing ``JUDGE_SPECS``."""
    from pathlib import Path

    from tether.models.preference import PreferenceJudge, is_preference_model_dir
    from tether.rollout.rewards import load_reward_source

    path = Path(spec).expanduser()
    if path.is_dir() and is_preference_model_dir(path):
        given = [k for k, v in (("temperature", temperature), ("tie_margin", tie_margin)) if v] + sorted(source_kw)
        if given:
            raise ValueError(f"judge {spec!r} is a preference model, which gives probabilities itself; {', '.join(given)} apply only to judges built on a reward")
        return PreferenceJudge(str(path))
    try:
        source = load_reward_source(spec, **source_kw)
    except ValueError as e:
        accepted = "; ".join(JUDGE_SPECS)
        raise ValueError(f"unknown judge {spec!r} ({e}); accepted judges: {accepted}") from e
    return RewardJudge(source, temperature=temperature, tie_margin=tie_margin, name=getattr(source, "name", spec))


__all__ = ["JUDGE_SPECS", "BothOrders", "PairJudge", "RewardJudge", "both_orders", "load_judge"]
