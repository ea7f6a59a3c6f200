"""Iterative DPO (`tether iterate`) on the tiny model: rounds leave their files, a SIGKILLed run
resumes to the same weights, the labellers, and the settings that do not apply."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

TESTS = Path(__file__).parent
SRC = TESTS.parent / "src"


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TETHER_CACHE", str(tmp_path / "cache"))


def _drive(out, kill: str, env_cache) -> int:
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{TESTS}", "OMP_NUM_THREADS": "1", "TETHER_CACHE": str(env_cache)}
    return subprocess.run([sys.executable, str(TESTS / "iterate_driver.py"), str(out), kill], env=env, capture_output=True, text=True).returncode


def _weights(out):
    from safetensors.torch import load_file

    return load_file(str(Path(out) / "round_2" / "dpo" / "model" / "model.safetensors"))


def test_two_rounds_leave_their_files_and_evaluation(tmp_path):
    """Two rounds: each keeps samples, labelled pairs, its DPO run and model, the held-out
    evaluation and a done marker; round 2 starts from round 1's model; the win-rate is a
    probability with an interval around it."""
    sys.path.insert(0, str(TESTS))
    from iterate_driver import config

    from tether.trainers.iterate import run_iterate

    result = run_iterate(config(str(tmp_path / "run"), eval_prompts=4, eval_samples=1, eval_bootstrap=50))
    for k in (1, 2):
        rd = tmp_path / "run" / f"round_{k}"
        for name in ("samples.jsonl", "pairs.jsonl", "label.json", "eval.json", "done.json", "dpo/model/model.safetensors", "dpo/metrics.jsonl"):
            assert (rd / name).is_file(), (k, name)
        rows = [json.loads(line) for line in open(rd / "pairs.jsonl")]
        assert rows and all({"prompt", "chosen", "rejected"} <= set(r) for r in rows)
        ev = json.loads((rd / "eval.json").read_text())
        assert 0 <= ev["win_rate_vs_initial"] <= 1 and ev["win_rate_ci"][0] <= ev["win_rate_vs_initial"] <= ev["win_rate_ci"][1]
    assert result["rounds"][1]["start"] == str(tmp_path / "run" / "round_1" / "dpo" / "model")
    assert result["model"] == str(tmp_path / "run" / "round_2" / "dpo" / "model")
    # round 2 sampled from round 1's policy, not the initial one
    samples = [json.loads(line) for line in open(tmp_path / "run" / "round_2" / "samples.jsonl")]
    assert samples[0]["model"].endswith("round_1/dpo/model")


def test_sigkill_mid_sample_between_rounds_and_mid_dpo_resumes_bit_exact(tmp_path):
    """One run straight through; another SIGKILLed three times (after the first batch of round
    1's samples, between rounds, in round 2's DPO step 3 after the step-2 checkpoint), each time
    rerun: its final policy has exactly the same weights, and round 1 was not redone after it
    finished (its done marker and model files untouched by the later reruns)."""
    cache = tmp_path / "cache"
    assert _drive(tmp_path / "full", "none", cache) == 0
    cut = tmp_path / "cut"
    assert _drive(cut, "mid-sample", cache) == -9
    assert not (cut / "round_1" / "pairs.jsonl").exists() and (cut / "round_1" / "samples.jsonl").stat().st_size > 0
    assert _drive(cut, "between-rounds", cache) == -9
    done = cut / "round_1" / "done.json"
    stamps = (done.stat().st_mtime_ns, (cut / "round_1" / "dpo" / "model" / "model.safetensors").stat().st_mtime_ns)
    assert done.is_file() and not (cut / "round_2" / "samples.jsonl").exists()
    assert _drive(cut, "mid-dpo", cache) == -9
    assert not (cut / "round_2" / "done.json").exists() and (cut / "round_2" / "dpo" / "checkpoints" / "step-0000002" / "COMPLETE").is_file()
    assert _drive(cut, "none", cache) == 0
    assert stamps == (done.stat().st_mtime_ns, (cut / "round_1" / "dpo" / "model" / "model.safetensors").stat().st_mtime_ns)
    a, b = _weights(tmp_path / "full"), _weights(cut)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    resumed = [json.loads(line) for line in open(cut / "round_2" / "dpo" / "metrics.jsonl")]
    assert any(r.get("split") == "train" for r in resumed)


def test_reference_initial_and_settings_that_do_not_apply(tmp_path):
    """reference=initial runs (round 2's reference is the initial model, a different result from
    reference=previous); a non-paired loss, data.path, weight offline and a rerun without resume are errors."""
    sys.path.insert(0, str(TESTS))
    from dataclasses import replace

    from iterate_driver import config

    from tether.trainers.iterate import run_iterate

    run_iterate(config(str(tmp_path / "init"), reference="initial"))
    prev = config(str(tmp_path / "prev"))
    run_iterate(replace(prev, dpo=replace(prev.dpo, reference="copy")))  # the same kind of reference as reference=initial uses
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "init" / "round_2" / "dpo" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "prev" / "round_2" / "dpo" / "model" / "model.safetensors"))
    assert any(not torch.equal(a[k], b[k]) for k in a)
    c1 = load_file(str(tmp_path / "init" / "round_1" / "dpo" / "model" / "model.safetensors"))
    c2 = load_file(str(tmp_path / "prev" / "round_1" / "dpo" / "model" / "model.safetensors"))
    assert all(torch.equal(c1[k], c2[k]) for k in c1)  # round 1: the initial model is the previous one
    cfg = config(str(tmp_path / "bad"))
    for bad, match in (
        (replace(cfg, dpo=replace(cfg.dpo, loss="kto")), "pairs"),
        (replace(cfg, data=replace(cfg.data, path="x.jsonl")), "data.path"),
        (replace(cfg, iterate=replace(cfg.iterate, uncertainty="weight")), "weight"),
        (replace(cfg, iterate=replace(cfg.iterate, reference="latest")), "iterate.reference"),
    ):
        with pytest.raises(ValueError, match=match):
            run_iterate(bad)
    fresh = config(str(tmp_path / "prev"))
    with pytest.raises(ValueError, match="train.resume=true"):
        run_iterate(replace(fresh, train=replace(fresh.train, resume=False)))


def test_annotations_labeller_reads_the_exported_pairs_of_each_round(tmp_path):
    """labeller=annotations: a missing round file stops the run naming the file; with the
    exported pairs in place the rerun trains on exactly those rows."""
    sys.path.insert(0, str(TESTS))
    from dataclasses import replace

    from iterate_driver import config

    from tether.trainers.iterate import run_iterate

    cfg = config(str(tmp_path / "run"), labeller="annotations", annotations=str(tmp_path / "export_{round}.jsonl"), rounds=1)
    with pytest.raises(FileNotFoundError, match="export_1.jsonl"):
        run_iterate(cfg)
    samples = [json.loads(line) for line in open(tmp_path / "run" / "round_1" / "samples.jsonl")]
    exported = [{"prompt": r["prompt"], "chosen": r["completions"][0], "rejected": r["completions"][1]} for r in samples]
    (tmp_path / "export_1.jsonl").write_text("".join(json.dumps(r) + "\n" for r in exported))
    run_iterate(replace(cfg, train=replace(cfg.train, resume=True)))
    kept = [json.loads(line) for line in open(tmp_path / "run" / "round_1" / "pairs.jsonl")]
    assert kept == exported
