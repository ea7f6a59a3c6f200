"""Reward sources for the online RL tests: cheap, deterministic, and learnable by a tiny model."""

import torch

LOWER = set("abcdefghijklmnopqrstuvwxyz")


class LowercaseReward:
    """Fraction of lowercase letters in each response; ``fail_on_call=n`` interrupts the n-th call
    (a run killed mid-step, for the resume tests)."""

    name = "lowercase"

    def __init__(self, fail_on_call: int | None = None):
        self.calls = 0
        self.fail_on_call = fail_on_call

    def score(self, prompts, responses):
        self.calls += 1
        if self.fail_on_call is not None and self.calls == self.fail_on_call:
            raise KeyboardInterrupt("simulated interruption")
        return {"reward": torch.tensor([sum(c in LOWER for c in r) / max(len(r), 1) for r in responses], dtype=torch.float32)}
