"""A sharded (DCP) checkpoint resumes without running code planted in it.

torch.distributed.checkpoint pickles two things: the directory's ``.metadata`` and each non-tensor
entry of the state (AdamW's param_groups: lr, betas, ...). Its own reader unpickles both with no
restriction; tether's ``ShardedCheckpointer.load`` goes through ``trainers.safe_dcp``. In one
process (DCP needs no process group there) the checkpointer writes and reads a real DCP directory.
"""

import pickle
import shutil
from pathlib import Path

import pytest
import torch

from tether.trainers.common import UnsafeCheckpointError


class PlantedCode:
    """Unpickling this writes ``marker``: what a hostile checkpoint could do on the resuming machine."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "code ran on load"))


def _trained(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    for _ in range(2):
        model(torch.randn(5, 4)).pow(2).sum().backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    return model, opt, sched


def _snapshot(model, opt) -> dict[str, torch.Tensor]:
    out = {f"w/{k}": v.clone() for k, v in model.state_dict().items()}
    for i, st in enumerate(opt.state.values()):
        out.update({f"o/{i}/{k}": v.clone() for k, v in st.items()})
    return out


def _saved(tmp_path):
    from tether.trainers.sharded_checkpoints import ShardedCheckpointer

    model, opt, sched = _trained()
    ckpt = ShardedCheckpointer(tmp_path / "checkpoints", keep=2)
    path = ckpt.save(2, model, opt, sched, {"note": "x"})
    return ckpt, path, model, opt, sched


def test_honest_sharded_checkpoint_resumes_bit_exact(tmp_path):
    """Weights, AdamW moments, the lr schedule and the extra state come back exactly after the
    model and optimiser moved on (two more updates)."""
    ckpt, path, model, opt, sched = _saved(tmp_path)
    assert (path / "sharded" / ".metadata").exists()
    before, lr = _snapshot(model, opt), opt.param_groups[0]["lr"]
    for _ in range(2):
        model(torch.randn(5, 4)).sum().backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    assert not torch.equal(before["w/0.weight"], model.state_dict()["0.weight"])
    step, extra = ckpt.load(path, model, opt, sched)
    assert (step, extra) == (2, {"note": "x"})
    after = _snapshot(model, opt)
    assert after.keys() == before.keys()
    for k in before:
        assert torch.equal(after[k], before[k]), k
    assert opt.param_groups[0]["lr"] == lr


def test_resume_refuses_planted_dcp_metadata(tmp_path):
    """A ``.metadata`` that runs code when unpickled: plain pickle runs it (the plant is live);
    the sharded resume refuses it, naming the file and the global, and the code never runs."""
    ckpt, path, model, opt, sched = _saved(tmp_path)
    meta = path / "sharded" / ".metadata"
    live = tmp_path / "live-marker"
    probe = tmp_path / "probe.metadata"
    probe.write_bytes(pickle.dumps({"storage_data": PlantedCode(str(live))}))
    pickle.loads(probe.read_bytes())
    assert live.read_text() == "code ran on load"

    marker = tmp_path / "marker"
    meta.write_bytes(pickle.dumps({"storage_data": PlantedCode(str(marker))}))
    with pytest.raises(UnsafeCheckpointError, match=r"refusing to resume from .*step-0000002/sharded/\.metadata: it names pathlib.*write_text"):
        ckpt.load(path, model, opt, sched)
    assert not marker.exists()


def test_resume_refuses_a_planted_non_tensor_entry(tmp_path):
    """A shard whose non-tensor entry (AdamW's lr) is a code-running pickle: DCP's own loader runs it
    (the plant is live), tether's refuses it, naming the entry, and the code never runs."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    ckpt, path, model, opt, sched = _saved(tmp_path)

    def plant(directory: Path, marker: Path) -> None:
        model_state, optim_state = get_state_dict(model, opt)
        optim_state["param_groups"][0]["lr"] = PlantedCode(str(marker))
        shutil.rmtree(directory)
        dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=str(directory))

    live = tmp_path / "live-marker"
    probe = tmp_path / "probe"
    probe.mkdir()
    plant(probe, live)
    model_state, optim_state = get_state_dict(model, opt)
    dcp.load({"model": model_state, "optimizer": optim_state}, checkpoint_id=str(probe))
    assert live.read_text() == "code ran on load"

    marker = tmp_path / "marker"
    plant(path / "sharded", marker)
    with pytest.raises(UnsafeCheckpointError, match=r"optimizer.param_groups.0.lr"):
        ckpt.load(path, model, opt, sched)
    assert not marker.exists()
