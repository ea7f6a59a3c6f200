"""Pairwise preference model: P(first ≻ second | prompt), symmetric by construction.

Construction. A causal LM with a linear head reads one sequence, the prompt followed by an
ordered pair of responses rendered as ``pair_text(a, b)`` ("Response A: … Response B: …") in the
assistant turn, and the head at the sequence's last token gives the score of the *ordered* pair,
s(x, a, b). The preference is the difference of the two orders:

    P(a ≻ b | x) = σ(s(x, a, b) − s(x, b, a)).

The logit is antisymmetric (swapping a and b negates it exactly, in floating point too), so
P(a ≻ b) + P(b ≻ a) = σ(d) + σ(−d) = 1 for every model, trained or not, and no position bias can
survive: each call runs both orders (two sequences per pair). Unlike a Bradley–Terry reward
model, s may depend on a and b jointly, so the model can represent intransitive preferences
(rock ≻ scissors ≻ paper ≻ rock), which no scalar reward can.

It is a ``RewardModel`` with one head (``"preference"``) over the ordered-pair text, so forward
passes, layouts, LoRA and saving are shared; it saves under its own file names
(``preference_head.safetensors``, ``preference_config.json``; safetensors + JSON, no pickle) so
a preference-model directory is never mistaken for a reward model's. ``PreferenceJudge`` makes
it a ``tether.feedback.judges.PairJudge`` (and so a reward source through
``tether.rollout.rewards.PreferenceModelReward``).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from tether.models.reward import RewardModel, _as_messages

PM_HEAD_FILE = "preference_head.safetensors"
PM_CONFIG_FILE = "preference_config.json"


def pair_text(first: str, second: str) -> str:
    """The assistant turn the model reads for the ordered pair (first, second)."""
    return f"Response A:\n{first}\n\nResponse B:\n{second}"


def encode_ordered_pair(tokenizer, prompt, first: str, second: str, max_length: int, truncation: str = "truncate_prompt"):
    """[(ids of x,a,b), (ids of x,b,a)] as ``Encoded``, fitted into ``max_length`` (prompt cut first,
    then the pair text's end), or None when the truncation policy drops it."""
    from tether.data.encode import encode, truncate_group

    messages = _as_messages(prompt)
    both = [encode(tokenizer, messages, pair_text(first, second)), encode(tokenizer, messages, pair_text(second, first))]
    return truncate_group(both, max_length, truncation)


class PreferenceModel(RewardModel):
    """``forward(batch) -> [N, 1]`` scores of ordered-pair sequences; ``prob`` -> P(first ≻ second)."""

    head_file = PM_HEAD_FILE
    config_file = PM_CONFIG_FILE

    def __init__(self, backbone, tokenizer=None, objectives=("preference",), weights=None, max_length: int = 512, adapter=None, head=None, pooling: str = "last"):
        if list(objectives) != ["preference"]:
            raise ValueError(f"a preference model has one head, 'preference'; got objectives {list(objectives)}")
        if pooling != "last":
            raise ValueError("a preference model reads the last token (mean pooling would blur which response came first)")
        super().__init__(backbone, tokenizer, objectives, weights, max_length, adapter, head, pooling)

    @staticmethod
    def pair_logits(scores: torch.Tensor) -> torch.Tensor:
        """Scores of ordered pairs laid out (x,a,b), (x,b,a), ... [2N] or [2N, 1] -> logits d [N]."""
        flat = scores.reshape(-1, 2)  # [N, 2]
        return flat[:, 0] - flat[:, 1]

    @torch.no_grad()
    def logits(self, prompts, first, second, batch_size: int = 16) -> torch.Tensor:
        """d = s(x, a, b) − s(x, b, a) for each triple -> [B]."""
        if not (len(prompts) == len(first) == len(second)):
            raise ValueError(f"{len(prompts)} prompts, {len(first)} first and {len(second)} second responses")
        n = len(first)
        texts = [pair_text(a, b) for a, b in zip(first, second)] + [pair_text(b, a) for a, b in zip(first, second)]
        scores = self.score(list(prompts) * 2, texts, batch_size=batch_size)  # [2B]
        return scores[:n] - scores[n:]

    def prob(self, prompts, first, second, batch_size: int = 16) -> torch.Tensor:
        """P(first ≻ second) for each (prompt, first, second) -> [B] in [0, 1]."""
        return torch.sigmoid(self.logits(prompts, first, second, batch_size))


class PreferenceJudge:
    """A ``PreferenceModel`` (or the directory of a saved one) as a ``PairJudge``.

    ``order_invariant``: P(b ≻ a) = 1 − P(a ≻ b) by construction (the model scores both orders
    itself), so ``tether eval`` asks it once instead of in both orders."""

    order_invariant = True

    def __init__(self, model, batch_size: int = 16, name: str | None = None):
        if isinstance(model, (str, os.PathLike)):
            name = name or Path(model).name
            model = PreferenceModel.from_pretrained(model)
        self.model = model
        self.batch_size = batch_size
        self.name = name or "preference_model"

    def __call__(self, prompts, first, second) -> torch.Tensor:
        return self.model.prob(list(prompts), list(first), list(second), self.batch_size)


def is_preference_model_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / PM_CONFIG_FILE).is_file()


__all__ = ["PreferenceJudge", "PreferenceModel", "encode_ordered_pair", "is_preference_model_dir", "pair_text"]
