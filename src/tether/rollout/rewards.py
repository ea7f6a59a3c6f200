"""Reward sources: anything that turns (prompt, response) texts into a reward per response.

Every source has a ``name`` and ``score(prompts, responses) -> dict[str, Tensor]`` whose
``"reward"`` entry is a float32 tensor [B]; sources may add diagnostics of the same shape
(an ensemble's ``"mean"`` and ``"spread"``, a judge's ``"win_prob"``). RL trainers read
``"reward"`` and log the rest.

``load_reward_source(spec)`` builds one from a string: ``"vader"`` (the gold sentiment judge),
``"module:function"`` (a Python callable), or the directory of a saved reward model / ensemble.
"""

from __future__ import annotations

import importlib
import inspect
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class RewardSource(Protocol):
    name: str

    def score(self, prompts: list[str], responses: list[str]) -> dict[str, torch.Tensor]: ...


def _as_rewards(values, expected: int, name: str) -> torch.Tensor:
    rewards = torch.as_tensor(values, dtype=torch.float32).reshape(-1).cpu()  # [B]
    if rewards.numel() != expected:
        raise ValueError(f"reward source {name!r} returned {rewards.numel()} rewards for {expected} responses")
    return rewards


def _check_lengths(prompts, responses) -> None:
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")


class FunctionReward:
    """A Python function as a reward: ``f(prompt, response) -> float`` called per pair, or, with
    ``batched=True``, ``f(prompts, responses) -> sequence or tensor of B floats``."""

    def __init__(self, fn: Callable, name: str | None = None, batched: bool = False):
        self.fn = fn
        self.batched = batched
        self.name = name or getattr(fn, "__name__", type(fn).__name__)

    def score(self, prompts: list[str], responses: list[str]) -> dict[str, torch.Tensor]:
        _check_lengths(prompts, responses)
        values = self.fn(list(prompts), list(responses)) if self.batched else [float(self.fn(p, r)) for p, r in zip(prompts, responses)]
        return {"reward": _as_rewards(values, len(responses), self.name)}


class RewardModelReward:
    """A trained ``tether.models.reward.RewardModel`` (or the path of a saved one): its scalar
    score (objectives combined with ``weights``, default the model's own) is the reward."""

    def __init__(self, model, weights: dict[str, float] | None = None, batch_size: int = 16, name: str | None = None):
        if isinstance(model, (str, os.PathLike)):
            from tether.models.reward import RewardModel

            name = name or Path(model).name
            model = RewardModel.from_pretrained(model)
        self.model = model
        self.weights = weights
        self.batch_size = batch_size
        self.name = name or "reward_model"

    def score(self, prompts: list[str], responses: list[str]) -> dict[str, torch.Tensor]:
        _check_lengths(prompts, responses)
        rewards = self.model.score(list(prompts), list(responses), batch_size=self.batch_size, weights=self.weights)
        return {"reward": _as_rewards(rewards, len(responses), self.name)}


class EnsembleReward:
    """A ``RewardEnsemble``: reward = mean − penalty · spread over members (``penalty`` defaults to
    the ensemble's own), with ``"mean"`` and ``"spread"`` (sample std over members) returned too."""

    def __init__(self, ensemble, penalty: float | None = None, weights: dict[str, float] | None = None, batch_size: int = 16, name: str | None = None):
        if isinstance(ensemble, (str, os.PathLike)):
            from tether.models.reward_ensemble import RewardEnsemble

            name = name or Path(ensemble).name
            ensemble = RewardEnsemble.from_pretrained(ensemble)
        self.ensemble = ensemble
        self.penalty = ensemble.penalty if penalty is None else penalty
        self.weights = weights
        self.batch_size = batch_size
        self.name = name or "reward_ensemble"

    def score(self, prompts: list[str], responses: list[str]) -> dict[str, torch.Tensor]:
        from tether.models.reward_ensemble import penalized

        _check_lengths(prompts, responses)
        mean, spread = self.ensemble.score(list(prompts), list(responses), batch_size=self.batch_size, weights=self.weights)  # [B], [B]
        mean, spread = _as_rewards(mean, len(responses), self.name), _as_rewards(spread, len(responses), self.name)
        return {"reward": penalized(mean, spread, self.penalty), "mean": mean, "spread": spread}


class PreferenceModelReward:
    """Rewards from a pairwise judge: ``judge(prompts, responses_a, responses_b) -> P(a beats b)`` [B].

    The reward of a response is its win probability against a baseline response to the same
    prompt, so it lies in [0, 1] and 0.5 means "as good as the baseline". Baselines:

    * ``baselines`` given to ``score`` (or fixed at construction): one per prompt, e.g. the
      reference policy's reply or a dataset answer;
    * otherwise the *other* samples of the same prompt: for prompts that occur several times in the
      batch (GRPO/RLOO groups), a response's reward is its mean win probability against every other
      response to that prompt. A prompt that occurs once has nothing to compare with and gets 0.5.

    The judge is called once per batch with all the needed (a, b) pairs. ``symmetric=True`` also
    asks for P(b beats a) and uses ``(P(a>b) + 1 − P(b>a)) / 2``, which cancels a judge's
    position bias at twice the cost.
    """

    def __init__(self, judge: Callable, baselines: Sequence[str] | None = None, symmetric: bool = False, name: str = "preference_model"):
        self.judge = judge
        self.baselines = list(baselines) if baselines is not None else None
        self.symmetric = symmetric
        self.name = name

    def _win_prob(self, prompts: list[str], a: list[str], b: list[str]) -> torch.Tensor:
        p = _as_rewards(self.judge(prompts, a, b), len(a), self.name)  # [M]
        if self.symmetric:
            q = _as_rewards(self.judge(prompts, b, a), len(a), self.name)  # [M]
            p = (p + (1.0 - q)) / 2
        return p

    def score(self, prompts: list[str], responses: list[str], baselines: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        _check_lengths(prompts, responses)
        prompts, responses = list(prompts), list(responses)
        baselines = baselines if baselines is not None else self.baselines
        if baselines is not None:
            _check_lengths(prompts, baselines)
            win = self._win_prob(prompts, responses, list(baselines))
            return {"reward": win, "win_prob": win}
        # Every ordered pair (i, j), i != j, of responses to the same prompt.
        groups: dict[str, list[int]] = {}
        for i, p in enumerate(prompts):
            groups.setdefault(p, []).append(i)
        pairs = [(i, j) for members in groups.values() for i in members for j in members if i != j]
        rewards = torch.full((len(responses),), 0.5)  # [B]
        if pairs:
            first, second = zip(*pairs)
            win = self._win_prob([prompts[i] for i in first], [responses[i] for i in first], [responses[j] for j in second])  # [M]
            owner = torch.tensor(first)  # [M]
            totals = torch.zeros(len(responses)).index_add_(0, owner, win)  # [B]
            counts = torch.zeros(len(responses)).index_add_(0, owner, torch.ones_like(win))  # [B]
            rewards = torch.where(counts > 0, totals / counts.clamp_min(1), rewards)
        return {"reward": rewards, "win_prob": rewards.clone()}


def vader_reward() -> FunctionReward:
    """The gold judge of the sentiment task: VADER's compound score (−1 … 1) of the response alone."""
    from tether.feedback.simulated import vader_gold

    vader_gold("")  # a missing package fails here, at set-up, naming the command that installs it
    return FunctionReward(lambda prompt, response: vader_gold(response), name="vader")


def _load_callable(spec: str, **kw) -> RewardSource:
    module_name, _, attr = spec.partition(":")
    fn = getattr(importlib.import_module(module_name), attr)
    if inspect.isclass(fn):
        fn = fn(**kw)  # a class: instantiate it with the keyword arguments
        kw = {}
    if hasattr(fn, "score") and hasattr(fn, "name"):
        return fn  # already a RewardSource
    return FunctionReward(fn, name=kw.pop("name", attr), batched=kw.pop("batched", False))


def load_reward_source(spec: str, **kw) -> RewardSource:
    """``"vader"``; ``"module:function"`` (a per-pair function, ``batched=True`` for a batched one, or
    a RewardSource object / class); or a directory holding a saved reward model or ensemble
    (``penalty=``, ``weights=``, ``batch_size=`` are passed on), or a saved pairwise preference model
    (``PreferenceModelReward``: a reply's win probability against the other replies to its prompt).
    ``penalty`` (the ensemble's mean − penalty·spread) with any source but an ensemble directory is
    refused: it would do nothing."""
    from tether.models.preference import is_preference_model_dir
    from tether.models.reward import is_reward_model_dir
    from tether.models.reward_ensemble import is_ensemble_dir

    path = Path(spec).expanduser()
    ensemble = path.is_dir() and is_ensemble_dir(path)
    if kw.get("penalty") is not None and not ensemble:
        # Only an ensemble has a spread to penalise; anywhere else the setting would do nothing.
        raise ValueError(
            f"reward.uncertainty_penalty={kw['penalty']} applies only to a saved reward ensemble directory, "
            f"but the reward source {spec!r} is not one; unset it or point the source at an ensemble"
        )
    if not ensemble:
        kw.pop("penalty", None)  # None here: the sources below take no penalty
    if spec == "vader":
        return vader_reward()
    if path.is_dir():
        if ensemble:
            return EnsembleReward(str(path), **kw)
        if is_reward_model_dir(path):
            return RewardModelReward(str(path), **kw)
        if is_preference_model_dir(path):  # a reply's reward: its win probability against the other replies to its prompt
            from tether.models.preference import PreferenceJudge

            if kw:
                raise ValueError(f"{spec} is a preference model; {', '.join(sorted(kw))} apply only to reward models and ensembles")
            return PreferenceModelReward(PreferenceJudge(str(path)), name=path.name)
        raise ValueError(f"{spec} is a directory but holds neither a reward model, a reward ensemble nor a preference model")
    if ":" in spec and not os.path.exists(spec):
        return _load_callable(spec, **kw)
    raise ValueError(f"unknown reward source {spec!r}: expected 'vader', 'module:function' or a saved reward model directory")


__all__ = [
    "EnsembleReward",
    "FunctionReward",
    "PreferenceModelReward",
    "RewardModelReward",
    "RewardSource",
    "load_reward_source",
    "vader_reward",
]
