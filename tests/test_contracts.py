"""Loud contracts of the training runs: nothing unsafe on load, nothing skipped or failed in silence,
progress and warnings readable without a terminal, evaluation bounded and said so."""

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from tether.config import DPOConfig, SFTConfig, load_config
from tether.trainers.common import Checkpointer, RunLogger, UnsafeCheckpointError

WORDS = ["apple", "river", "stone", "cloud", "maple", "ember", "frost", "grain", "harbor", "island", "jade", "kettle"]


class PlantedCode:
    """Unpickling this writes ``marker``: what a hostile checkpoint could do on the resuming machine."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "code ran on load"))


def _pairs(path: Path, n: int = len(WORDS)) -> Path:
    with open(path, "w") as f:
        for w in WORDS[:n]:
            f.write(json.dumps({"prompt": f"Spell {w}", "chosen": " ".join(w.upper()), "rejected": "no no no"}) + "\n")
    return path


def _dpo(out, data, steps=2, **extra):
    base = {
        "model.name_or_path": "tiny",
        "data.path": str(data),
        "data.eval_fraction": "0",
        "train.output_dir": str(out),
        "train.max_steps": str(steps),
        "train.batch_size": "4",
        "train.micro_batch_size": "2",
        "train.progress": "false",
        "train.threads": "1",
        "train.sample_prompts": "[]",
        "train.save_every": "1",
    }
    base.update(extra)
    return load_config(DPOConfig, None, [f"{k}={v}" for k, v in base.items()])


# --------------------------------------------------------------------------- nothing unsafe on load


def test_resume_refuses_a_planted_code_running_pickle(tmp_path, monkeypatch):
    """A checkpoint whose state.pt is a pickle that runs code: plain unpickling runs it (the test's
    own check that the plant is live); resuming refuses the file, naming it, and the code never runs."""
    from tether.trainers.dpo import run_dpo

    monkeypatch.setenv("TETHER_CACHE", str(tmp_path / "cache"))
    data = _pairs(tmp_path / "pairs.jsonl")
    out = tmp_path / "run"
    run_dpo(_dpo(out, data, steps=2))
    state = out / "checkpoints" / "step-0000002" / "state.pt"
    assert state.exists()

    live = tmp_path / "live-marker"
    torch.save({"step": 2, "optimizer": PlantedCode(str(live))}, tmp_path / "probe.pt")
    torch.load(tmp_path / "probe.pt", weights_only=False)
    assert live.read_text() == "code ran on load"

    marker = tmp_path / "marker"
    torch.save({"step": 2, "optimizer": PlantedCode(str(marker)), "scheduler": None, "rng": {}, "extra": {}}, state)
    with pytest.raises(UnsafeCheckpointError, match=r"refusing to resume from .*step-0000002/state.pt"):
        run_dpo(_dpo(out, data, steps=3, **{"train.resume": "true"}))
    assert not marker.exists()


def test_checkpoint_state_round_trips_with_weights_only(tmp_path):
    """What Checkpointer writes loads with weights_only=True and restores every RNG exactly: the
    draws after load equal the draws after save."""
    import random

    import numpy as np

    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    np.random.normal()  # a cached Gaussian in numpy's state
    path = Checkpointer(tmp_path, keep=2).save(1, model, opt, sched, {"history": {"loss": [1.0]}})
    after = (random.random(), torch.rand(2).tolist(), np.random.normal())
    torch.load(path / "state.pt", weights_only=True)  # raises if anything needs unpickling
    opt2 = torch.optim.AdamW(model.parameters(), lr=1e-2)
    step, extra = Checkpointer(tmp_path).load(path, model, opt2, torch.optim.lr_scheduler.LambdaLR(opt2, lambda s: 1.0))
    assert step == 1 and extra == {"history": {"loss": [1.0]}}
    assert (random.random(), torch.rand(2).tolist(), np.random.normal()) == after
    torch.testing.assert_close(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"], rtol=0, atol=0)


# --------------------------------------------------------------------------- nothing silent


def test_tensorboard_missing_is_a_printed_warning(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    logger = RunLogger(tmp_path, 2, progress=False)
    logger.log(1, {"loss": 1.0})
    logger.close()
    out = capsys.readouterr().out
    assert "[warning] TensorBoard logging is off" in out and "[bold" not in out
    assert json.loads((tmp_path / "metrics.jsonl").read_text())["loss"] == 1.0


def test_tensorboard_that_fails_to_start_is_an_error(tmp_path, monkeypatch):
    import torch.utils.tensorboard as tb

    def broken(*a, **k):
        raise OSError("cannot write event file")

    monkeypatch.setattr(tb, "SummaryWriter", broken)
    with pytest.raises(OSError, match="cannot write event file"):
        RunLogger(tmp_path, 2, progress=False)


def test_skipped_eval_rows_and_a_skipped_evaluation_are_reported(tmp_path, capsys):
    """A separate eval file's malformed rows (data.on_error=skip) and, for a data set under ten
    records, the evaluation that is not held out: each printed and kept in summary.json."""
    from tether.trainers.sft import run_sft

    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"prompt": f"Say {w}", "completion": w}) + "\n" for w in WORDS))
    evaluation = tmp_path / "eval.jsonl"
    evaluation.write_text(json.dumps({"prompt": "Say a", "completion": "a"}) + "\n" + json.dumps({"prompt": "no completion"}) + "\n")
    common = ["model.name_or_path=tiny", "train.max_steps=1", "train.progress=false", "train.sample_prompts=[]", "train.threads=1", "data.on_error=skip"]
    run_sft(load_config(SFTConfig, None, [*common, f"data.path={train}", f"data.eval_path={evaluation}", f"train.output_dir={tmp_path / 'a'}"]))
    out = capsys.readouterr().out
    assert f"{evaluation}: skipped 1 malformed rows (data.on_error=skip):" in out and "eval.jsonl:2" in out
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert any(f"{evaluation}: skipped 1 malformed rows" in line for line in summary["data report"])

    small = tmp_path / "small.jsonl"
    small.write_text("".join(json.dumps({"prompt": f"Say {w}", "completion": w}) + "\n" for w in WORDS[:6]))
    run_sft(load_config(SFTConfig, None, [*common, f"data.path={small}", "data.eval_fraction=0.2", f"train.output_dir={tmp_path / 'b'}"]))
    said = f"eval: skipped: {small} has 6 records, fewer than the 10 needed to hold out data.eval_fraction=0.2"
    assert said in capsys.readouterr().out
    assert any(said in line for line in json.loads((tmp_path / "b" / "summary.json").read_text())["data report"])


# --------------------------------------------------------------------------- cost and progress


def test_evaluation_is_bounded_and_says_so(tmp_path, monkeypatch, capsys):
    """train.eval_examples=3 of 12 held-out pairs: the run says so, the reference cache computes
    those 3 (and the step's 4) only, and the end-of-run evaluation sees 3."""
    import tether.trainers.offline as offline
    from tether.trainers.dpo import run_dpo
    from tether.trainers.offline import bound_evaluation

    examples = list(range(12))
    subset, line = bound_evaluation(examples, 3, seed=0)
    assert len(subset) == 3 and subset == sorted(subset) and "3 of 12" in line
    assert bound_evaluation(examples, None, 0) == (examples, None) and bound_evaluation(examples, 12, 0) == (examples, None)

    monkeypatch.setenv("TETHER_CACHE", str(tmp_path / "cache"))
    seen = []
    real = offline.evaluate

    def counting(model, objective, examples, micro, dist=None):
        seen.append(len(examples))
        return real(model, objective, examples, micro, dist)

    monkeypatch.setattr(offline, "evaluate", counting)
    data = _pairs(tmp_path / "pairs.jsonl")
    run_dpo(_dpo(tmp_path / "run", data, steps=1, **{"data.eval_path": str(data), "train.eval_examples": "3"}))
    out = capsys.readouterr().out
    assert "evaluation: 3 of 12 held-out examples (train.eval_examples=3" in out
    assert "this run uses 7 examples" in out  # the step's 4 + 3 evaluation pairs (distinct objects)
    assert seen == [3]
    assert any("3 of 12" in line for line in json.loads((tmp_path / "run" / "summary.json").read_text())["data report"])


def test_without_a_terminal_progress_prints_plain_lines(tmp_path, monkeypatch, capsys):
    """Captured output is not a terminal: the step progress and the reference pass print plain
    lines (stage, done/total, rate, elapsed, ETA), with no rich markup anywhere."""
    from tether.trainers.dpo import run_dpo
    from tether.trainers.progress import Progress

    bar = Progress("stage", 4, interval=3600)
    assert bar.plain
    for _ in range(4):
        bar.advance(1)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("stage: 1/4 (25%), ") and "it/s" in lines[0] and "eta " in lines[0]
    assert len(lines) == 2 and lines[1].startswith("stage: 4/4 (100%)")  # first, then the interval holds back all but the last

    monkeypatch.setenv("TETHER_CACHE", str(tmp_path / "cache"))
    run_dpo(_dpo(tmp_path / "run", _pairs(tmp_path / "pairs.jsonl"), steps=2, **{"train.progress": "true"}))
    out = capsys.readouterr().out
    assert "reference pass: 2/8 (25%)" in out and "reference pass: 8/8 (100%)" in out
    assert "dpo: 1/2 (50%), " in out and " tok/s, elapsed 0:00:" in out and "dpo: 2/2 (100%)" in out
    assert "[bold" not in out and "[/]" not in out


def test_warnings_print_clean_without_a_terminal(tmp_path, capsys):
    """A monitor's '[warning] ...' line: its brackets are text, not markup; no style tags leak."""
    logger = RunLogger(tmp_path, 2, progress=True)
    logger.warn("[warning] kl_growth at step 3: KL grew")
    logger.print("[bold]plain[/] text")
    logger.close()
    out = capsys.readouterr().out
    assert "[warning] kl_growth at step 3: KL grew" in out and "plain text" in out
    assert "[bold" not in out and "[/]" not in out
    shutil.rmtree(tmp_path)


# --------------------------------------------------------------------------- one reference policy


def test_one_rule_decides_auto_for_offline_and_online():
    """auto: adapters off with LoRA; without, the disk cache for a fixed data set and a frozen copy
    for online samples (new every step). Online and offline reference classes are the same one."""
    from tether.trainers.online import Reference as OnlineReference
    from tether.trainers.reference import Reference, ReferencePolicy, resolve_mode

    assert resolve_mode("auto", lora_enabled=True) == resolve_mode("auto", True, fresh_samples=True) == "adapter"
    assert resolve_mode("auto", lora_enabled=False) == "cached"
    assert resolve_mode("auto", lora_enabled=False, fresh_samples=True) == "copy"
    with pytest.raises(ValueError, match="needs a fixed data set"):
        resolve_mode("cached", False, fresh_samples=True)
    with pytest.raises(ValueError, match="lora.enabled=true"):
        resolve_mode("adapter", False)
    assert issubclass(OnlineReference, Reference) and issubclass(ReferencePolicy, Reference)
    model = torch.nn.Linear(2, 2)
    online = OnlineReference("auto", model, lora_enabled=False)
    assert online.mode == "copy" and online.frozen is not model
    with online.network(model) as net:
        assert net is online.frozen and not torch.is_grad_enabled()
