"""Rollouts: the batched sampling engine (``engine``) and reward sources (``rewards``).

Names are resolved on first use, so ``import tether.rollout`` imports neither torch nor transformers.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "SamplingParams": "engine",
    "Rollout": "engine",
    "DecodePath": "engine",
    "generate": "engine",
    "encode_prompts": "engine",
    "stop_token_ids": "engine",
    "RewardSource": "rewards",
    "FunctionReward": "rewards",
    "RewardModelReward": "rewards",
    "EnsembleReward": "rewards",
    "PreferenceModelReward": "rewards",
    "vader_reward": "rewards",
    "load_reward_source": "rewards",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"tether.rollout.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'tether.rollout' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_EXPORTS))


__all__ = list(_EXPORTS)
