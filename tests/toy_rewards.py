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


def run_through_and_resumed(run, cfg_for) -> tuple[str, str]:
    """Train twice with ``run(cfg, reward_source=...)``: once straight through, once killed while
    scoring step 3 (after the step-2 checkpoint) and resumed. ``cfg_for(name)`` builds the config
    (save_every=2). Asserts that both runs end with bit-identical policy weights and logged the
    same rewards; returns the two output directories (through, resumed) for further checks."""
    import json
    from dataclasses import replace

    import pytest
    from safetensors.torch import load_file

    full = cfg_for("full")
    run(full, reward_source=LowercaseReward())
    cut = cfg_for("cut")
    with pytest.raises(KeyboardInterrupt):
        run(cut, reward_source=LowercaseReward(fail_on_call=3))
    run(replace(cut, train=replace(cut.train, resume=True)), reward_source=LowercaseReward())

    a = load_file(f"{full.train.output_dir}/model/model.safetensors")
    b = load_file(f"{cut.train.output_dir}/model/model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    logged = [[json.loads(line)["reward/mean"] for line in open(f"{c.train.output_dir}/metrics.jsonl")] for c in (full, cut)]
    assert logged[0] == logged[1][-len(logged[0]) :]  # the resumed log holds the killed run's steps too
    return full.train.output_dir, cut.train.output_dir
