"""bench/gpu.py's CPU dry run: the GPU benchmark's code path (SFT and DPO steps through tether's
objectives, the engine against ``generate``) on a tiny model, so a change to those APIs breaks CI
instead of a GPU session, which has minutes, not hours."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_gpu_benchmark_dry_run_reports_every_figure():
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "gpu.py"), "--device", "cpu", "--tiny"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    benches = {r.get("bench"): r for r in rows if "bench" in r}
    assert set(benches) >= {"sft", "dpo (padded)", "decode: tether engine", "decode: transformers generate", "decode: speed-up"}
    assert benches["sft"]["tokens_per_second"] > 0 and benches["dpo (padded)"]["tokens_per_second"] > 0
    assert benches["decode: speed-up"]["tether_over_generate"] > 0
