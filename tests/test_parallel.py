import json
import subprocess
import sys
import textwrap

import torch

from tether.parallel import World, gather_rows, global_sum, shard, world


def test_world_of_one_is_the_identity(monkeypatch):
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    assert world() == World(0, 1, 0)
    x = torch.tensor([1.0, 2.0])
    assert torch.equal(global_sum(x), x)
    assert torch.equal(gather_rows(x), x)
    assert shard([1, 2, 3]) == [1, 2, 3]


def test_shard_interleaves_and_covers_every_item_once():
    items = list(range(7))
    shares = [shard(items, World(r, 3, r)) for r in range(3)]
    assert shares == [[0, 3, 6], [1, 4], [2, 5]]
    assert sorted(sum(shares, [])) == items


def test_two_gloo_processes_sum_and_gather(tmp_path):
    """torchrun, 2 processes on the CPU: rank r holds r+1 rows of value r; the global sum of the
    row counts is 1 + 2 = 3 and the gathered rows come back in rank order [0, 1, 1]."""
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(
        f"""
        import json, torch
        from tether.parallel import init, global_sum, gather_rows, shard
        w = init("gloo")
        rows = torch.full((w.rank + 1, 2), float(w.rank))
        total = global_sum(torch.tensor(float(rows.shape[0])))
        gathered = gather_rows(rows)
        out = {{"rank": w.rank, "size": w.size, "total": total.item(), "gathered": gathered[:, 0].tolist(),
               "share": shard(list(range(5)))}}
        open({str(tmp_path)!r} + f"/rank{{w.rank}}.json", "w").write(json.dumps(out))
        torch.distributed.destroy_process_group()
        """
    ))
    subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script)],
        check=True, capture_output=True, timeout=120,
    )
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for r, res in enumerate(results):
        assert res["rank"] == r and res["size"] == 2
        assert res["total"] == 3.0
        assert res["gathered"] == [0.0, 1.0, 1.0]
    assert results[0]["share"] == [0, 2, 4] and results[1]["share"] == [1, 3]
