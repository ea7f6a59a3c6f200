import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from tether.pipeline.stages import Stage, run_stages


def _counting(calls, name, value):
    def fn(ctx):
        calls.append(name)
        upstream = sum(r.result["value"] for r in ctx.inputs.values())
        (ctx.out / "out.txt").write_text(str(value + upstream))
        return {"value": value + upstream}

    return fn


def _chain(calls, sample_seed=0, rm_lr=1.0, policy_beta=0.1):
    return [
        Stage("sample", _counting(calls, "sample", 1), {"seed": sample_seed}),
        Stage("label", _counting(calls, "label", 10), {}, reads=("sample",)),
        Stage("rm", _counting(calls, "rm", 100), {"lr": rm_lr}, reads=("label",)),
        Stage("policy", _counting(calls, "policy", 1000), {"beta": policy_beta}, reads=("rm",)),
        Stage("eval", _counting(calls, "eval", 0), {}, reads=("policy", "sample")),
    ]


def test_second_run_reuses_every_stage(tmp_path):
    calls = []
    first = run_stages(_chain(calls), tmp_path)
    assert calls == ["sample", "label", "rm", "policy", "eval"]
    calls.clear()
    second = run_stages(_chain(calls), tmp_path)
    assert calls == []
    assert all(r.reused for r in second.values())
    assert {k: r.result for k, r in second.items()} == {k: r.result for k, r in first.items()}
    # eval reads policy (1111) and sample (1): 1112
    assert second["eval"].result == {"value": 1112}


def test_changed_setting_reruns_that_stage_and_what_reads_it(tmp_path):
    calls = []
    run_stages(_chain(calls), tmp_path)
    calls.clear()
    run_stages(_chain(calls, rm_lr=2.0), tmp_path)
    assert calls == ["rm", "policy", "eval"]
    calls.clear()
    run_stages(_chain(calls, rm_lr=2.0, policy_beta=0.5), tmp_path)
    assert calls == ["policy", "eval"]


def test_failed_stage_is_not_marked_done_and_reruns(tmp_path):
    calls = []

    def boom(ctx):
        (ctx.out / "partial.txt").write_text("half")
        raise RuntimeError("killed")

    stages = _chain(calls)
    stages[2] = Stage("rm", boom, {"lr": 1.0}, reads=("label",))
    with pytest.raises(RuntimeError):
        run_stages(stages, tmp_path)
    assert calls == ["sample", "label"]
    calls.clear()
    run_stages(_chain(calls), tmp_path)
    assert calls == ["rm", "policy", "eval"]
    assert not (tmp_path / "stages" / "rm" / "partial.txt").exists()


def test_stage_reading_a_later_stage_is_refused(tmp_path):
    with pytest.raises(ValueError, match="do not run before it"):
        run_stages([Stage("a", lambda ctx: {}, reads=("b",)), Stage("b", lambda ctx: {})], tmp_path)


def test_sigkill_mid_stage_then_rerun_runs_only_unfinished(tmp_path):
    """A real kill: the child process runs three stages, the second blocks until killed."""
    log = tmp_path / "calls.log"
    script = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from tether.pipeline.stages import Stage, run_stages
        log = Path({str(log)!r})
        block = sys.argv[1] == "block"
        def make(name, wait):
            def fn(ctx):
                with log.open("a") as f:
                    f.write(name + "\\n")
                if wait and block:
                    (ctx.out.parent.parent / "started").write_text("1")
                    time.sleep(60)
                return {{"name": name}}
            return fn
        run_stages([Stage("one", make("one", False)), Stage("two", make("two", True), reads=("one",)),
                    Stage("three", make("three", False), reads=("two",))], {str(tmp_path)!r})
        """
    )
    child = subprocess.Popen([sys.executable, "-c", script, "block"], env={**os.environ})
    deadline = time.time() + 30
    while not (tmp_path / "started").exists():
        assert time.time() < deadline and child.poll() is None, "child never reached stage two"
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert log.read_text().split() == ["one", "two"]
    subprocess.run([sys.executable, "-c", script, "run"], check=True, env={**os.environ})
    assert log.read_text().split() == ["one", "two", "two", "three"]
    done = json.loads((tmp_path / "stages" / "three" / "done.json").read_text())
    assert done["result"] == {"name": "three"}
