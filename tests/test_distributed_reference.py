"""The cached reference pass under torchrun (gloo, 2 processes): each process computes its share
of the examples and the values are gathered, so the cache equals the one a single process writes.

The examples to compute are cut into the micro-batches one process would run and process r runs
batches r, r + 2, ...: with 9 examples in micro-batches of 2 (2, 2, 2, 2, 1 after sorting by
length) process 0 computes batches 0, 2, 4 (5 examples) and process 1 batches 1, 3 (4 examples);
in the last round process 1 has none (under FSDP it joins the round's forward pass, discarding
it). Every value is computed in the same micro-batch as in one process, so the values are equal.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

WORKER = '''
import json, sys
import torch
from tether import parallel
from tether.data.layouts import Layout
from tether.models import tiny_model_and_tokenizer
from tether.trainers.distributed import Distributed, check_mode
import tether.trainers.reference as reference
sys.path.insert(0, sys.argv[3])
from test_trainer_dpo import _random_examples

out, mode = sys.argv[1], sys.argv[2]
check_mode(mode, 2, "train.batch_size")
torch.manual_seed(0)
model, tok = tiny_model_and_tokenizer()
dist = Distributed(model, mode)
examples = _random_examples(9, 2, seed=4)
cache = reference.CachedReference(tok.pad_token_id, Layout.PADDED, 64, 16, micro_batch_size=2, progress=False, flush_every=4)
cache.prepare(model, examples, dist)
values = {reference.example_key(e): e.extra["ref_logps"] for e in examples}
json.dump({"values": values, "computed": cache.computed, "directory": str(cache.directory)}, open(f"{out}-rank{parallel.world().rank}.json", "w"))
'''


def run_worker(tmp_path: Path, name: str, nproc: int, mode: str = "ddp") -> list[dict]:
    script = tmp_path / "reference_worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1", "TETHER_CACHE": str(tmp_path / f"cache-{name}")}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)] if nproc > 1 else [sys.executable]
    proc = subprocess.run([*launcher, str(script), str(tmp_path / name), mode, str(REPO / "tests")], check=False, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return [json.loads((tmp_path / f"{name}-rank{r}.json").read_text()) for r in range(nproc)]


def on_disk(directory: str) -> tuple[dict, set[str]]:
    """(key -> values, the processes (pids) that wrote the shard files)."""
    values, writers = {}, set()
    for shard in sorted(Path(directory).glob("shard-*.pt")):
        data = torch.load(shard, weights_only=True)
        values.update(zip(data["keys"], data["values"]))
        writers.add(shard.stem.split("-")[-1])
    return values, writers


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_reference_cache_pass_is_split_across_processes(tmp_path, mode):
    one = run_worker(tmp_path, "one", 1)[0]
    two = run_worker(tmp_path, "two", 2, mode)
    assert one["computed"] == 9 and [r["computed"] for r in two] == [5, 4]  # each process its share, nothing twice
    assert Path(one["directory"]).name == Path(two[0]["directory"]).name  # the same model fingerprint
    for rank in two:  # every process holds every value, gathered
        assert rank["values"].keys() == one["values"].keys()
        for key, v in one["values"].items():
            assert rank["values"][key] == pytest.approx(v, rel=1e-6, abs=1e-6), key
    disk_one, _ = on_disk(one["directory"])
    disk_two, writers = on_disk(two[0]["directory"])
    assert len(writers) == 1  # the main process alone wrote the shards
    assert disk_two.keys() == disk_one.keys() == one["values"].keys()
    for key, v in disk_one.items():
        assert disk_two[key] == pytest.approx(v, rel=1e-6, abs=1e-6), key
