"""SFT on a tiny random model: the loss falls, the model saves and reloads, runs resume exactly."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tether.config import SFTConfig, load_config
from tether.trainers.common import NonFiniteLossError
from tether.trainers.sft import run_sft

REPO = Path(__file__).resolve().parents[1]


def _overrides(data, out, steps=40, **extra):
    base = {
        "model.name_or_path": "tiny",
        "data.path": str(data),
        "data.eval_fraction": "0",
        "train.output_dir": str(out),
        "train.max_steps": str(steps),
        "train.batch_size": "4",
        "train.micro_batch_size": "2",
        "train.lr": "3e-3",
        "train.warmup_ratio": "0",
        "train.progress": "false",
        "train.threads": "1",
        "train.sample_prompts": "[]",
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def _losses(out):
    return [r["loss"] for r in map(json.loads, open(Path(out) / "metrics.jsonl")) if r["split"] == "train"]


def test_loss_falls_and_model_reloads_in_transformers(demo_file, tmp_path):
    out = tmp_path / "run"
    run_sft(load_config(SFTConfig, None, _overrides(demo_file, out, steps=40)))
    losses = _losses(out)
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < 0.5 * first, (first, last)

    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(out / "model")
    assert reloaded.config.vocab_size > 0
    assert (out / "model" / "model.safetensors").exists()


def test_packed_training_gives_same_first_loss(demo_file, tmp_path):
    a = tmp_path / "pad"
    b = tmp_path / "pack"
    run_sft(load_config(SFTConfig, None, _overrides(demo_file, a, steps=2)))
    run_sft(load_config(SFTConfig, None, _overrides(demo_file, b, steps=2, **{"data.pack": "true"})))
    assert _losses(a)[0] == pytest.approx(_losses(b)[0], rel=1e-5)


def test_nan_loss_stops_with_clear_message(demo_file, tmp_path):
    cfg = load_config(SFTConfig, None, _overrides(demo_file, tmp_path / "nan", steps=3, **{"train.lr": "1e30", "train.max_grad_norm": "0"}))
    with pytest.raises(NonFiniteLossError, match="became"):
        run_sft(cfg)


def _weights(out):
    from safetensors.torch import load_file

    return load_file(str(out / "model" / "model.safetensors"))


def test_sigkill_then_resume_matches_uninterrupted_run(demo_file, tmp_path):
    steps = 24
    straight = tmp_path / "straight"
    run_sft(load_config(SFTConfig, None, _overrides(demo_file, straight, steps=steps, **{"train.save_every": "2"})))

    killed = tmp_path / "killed"
    args = [sys.executable, "-m", "tether.cli", "sft", *_overrides(demo_file, killed, steps=steps, **{"train.save_every": "2"})]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    ckpts = killed / "checkpoints"
    while time.time() < deadline and proc.poll() is None:
        done = [p for p in ckpts.glob("step-*") if (p / "COMPLETE").exists()] if ckpts.exists() else []
        if any(int(p.name.split("-")[1]) >= 4 for p in done):
            break
        time.sleep(0.02)
    assert proc.poll() is None, "training finished before it could be killed: " + proc.stderr.read().decode()[-2000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "model").exists()

    run_sft(load_config(SFTConfig, None, _overrides(demo_file, killed, steps=steps, **{"train.save_every": "2", "train.resume": "true"})))
    a, b = _weights(straight), _weights(killed)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)
