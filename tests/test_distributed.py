"""Distributed training on the CPU (gloo): 2 processes under torchrun equal 1 process.

Offline commands run in both modes: ``ddp`` (replicated weights, gradients summed once per step)
and ``fsdp`` (FSDP2 fully_shard: weights, gradients and optimiser state sharded; the final model
gathered for the export).

Each command runs twice on the same global batches: once in this process (a world of one), once
as ``torchrun --nproc-per-node 2`` where each process takes half of every global batch. The loss
is divided by the *global* unit count and the gradients are summed over processes, so the logged
loss, the gradient norm (measured before clipping, after the gradients are summed), the held-out
loss and the weights after the run must agree to float32 rounding (the two runs add the same
numbers in a different order). The micro-batch sizes differ on purpose: 1 process accumulates
2 micro-batches of 2, each of the 2 processes 2 micro-batches of 1.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tether.config import DPOConfig, SFTConfig, load_config

REPO = Path(__file__).resolve().parents[1]
WORDS = ["apple", "river", "stone", "cloud", "maple", "ember", "frost", "grain", "harbor", "island", "jade", "kettle"]


def torchrun(command: list[str], overrides: list[str], cache: Path, nproc: int = 2) -> None:
    """``python -m torch.distributed.run --standalone --nproc-per-node N -m tether.cli <command> <overrides>``."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1", "TETHER_CACHE": str(cache)}
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), "-m", "tether.cli", *command, *overrides]
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]


def records(out: Path, split: str) -> list[dict]:
    return [r for r in map(json.loads, open(out / "metrics.jsonl")) if r["split"] == split]


def weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def assert_same_run(one: Path, two: Path, model_file: str, keys=("loss", "grad_norm"), mode: str = "ddp", not_at_first_step=()) -> None:
    """``not_at_first_step``: keys that count signs of numbers which are rounding noise before the
    first update (DPO's accuracy, when the policy still equals its reference)."""
    last = sorted((two / "checkpoints").glob("step-*"))[-1]
    assert (last / "sharded").is_dir() == (mode == "fsdp")  # FSDP: each process wrote its shard (DCP)
    a, b = records(one, "train"), records(two, "train")
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        for k in keys:
            if ra is a[0] and k in not_at_first_step:
                continue
            assert rb[k] == pytest.approx(ra[k], rel=2e-5, abs=1e-7), (ra["step"], k, ra[k], rb[k])
    ea, eb = records(one, "eval"), records(two, "eval")
    assert len(ea) == len(eb)
    for ra, rb in zip(ea, eb):
        assert rb["loss"] == pytest.approx(ra["loss"], rel=2e-5), ("eval", ra, rb)
    assert_same_weights(one / "model", two / "model", model_file, len(a))
    assert not (two / "rank1").exists()  # nothing but rank 0 writes


def assert_same_weights(one: Path, two: Path, pattern: str, steps: int) -> None:
    """The ``pattern`` files of two exported model directories hold the same weights, to within
    AdamW's rounding after ``steps`` logged steps."""
    files = sorted(p.name for p in one.glob(pattern))
    assert files and files == sorted(p.name for p in two.glob(pattern))
    wa = {f"{f}/{k}": v for f in files for k, v in weights(one / f).items()}
    wb = {f"{f}/{k}": v for f in files for k, v in weights(two / f).items()}
    assert wa.keys() == wb.keys()
    for name in wa:
        # AdamW moves each weight by about lr·m/(√v + eps) per update: where a gradient entry is
        # within rounding of 0 (a sum that cancels) that ratio is ill-conditioned and the entry can
        # move anywhere in ±lr, and a few updates compound rounding. So: nearly every entry within
        # 1% of lr (3e-5), none off by more than 2·lr per logged step. A missing gradient sum
        # changes the update's direction everywhere; a wrong normaliser (which Adam's first update
        # would not show) changes the logged loss and gradient norm compared above.
        close = torch.isclose(wb[name], wa[name], rtol=0, atol=3e-5)
        assert close.float().mean() > 0.999, (name, int((~close).sum()), wa[name].numel())
        assert (wb[name] - wa[name]).abs().max() <= 2 * 3e-3 * steps, name


def base_overrides(out: Path, micro: int, **extra) -> list[str]:
    base = {
        "model.name_or_path": "tiny",
        "train.output_dir": str(out),
        "train.max_steps": "2",
        "train.batch_size": "4",
        "train.micro_batch_size": str(micro),
        "train.lr": "3e-3",
        "train.warmup_ratio": "0",
        "train.progress": "false",
        "train.threads": "1",
        "train.save_every": "0",
        "data.eval_fraction": "0.25",
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_sft_two_processes_equal_one(demo_file, tmp_path, monkeypatch, mode):
    """SFT: the normaliser is the global batch's completion tokens, which differ between the two
    processes' shares, so a per-process mean would not match; the global one must."""
    from tether.trainers.sft import run_sft

    monkeypatch.setenv("TETHER_CACHE", str(tmp_path / "cache"))
    extra = {"data.path": str(demo_file), "train.sample_prompts": "[]"}
    run_sft(load_config(SFTConfig, None, base_overrides(tmp_path / "one", 2, **extra)))
    torchrun(["sft"], base_overrides(tmp_path / "two", 1, **extra, **{"train.distributed": mode}), tmp_path / "cache")
    assert_same_run(tmp_path / "one", tmp_path / "two", "model.safetensors", mode=mode)


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_dpo_two_processes_equal_one(tmp_path, monkeypatch, mode):
    """DPO with a cached reference (each process computes the reference pass; same numbers)."""
    from tether.trainers.dpo import run_dpo

    data = tmp_path / "pairs.jsonl"
    with open(data, "w") as f:
        for w in WORDS:
            f.write(json.dumps({"prompt": f"Spell {w}", "chosen": " ".join(w.upper()), "rejected": "no no no"}) + "\n")
    monkeypatch.setenv("TETHER_CACHE", str(tmp_path / "cache"))
    extra = {"data.path": str(data), "train.sample_prompts": "[]", "dpo.beta": "0.5"}
    run_dpo(load_config(DPOConfig, None, base_overrides(tmp_path / "one", 2, **extra)))
    torchrun(["dpo"], base_overrides(tmp_path / "two", 1, **extra, **{"train.distributed": mode}), tmp_path / "cache")
    keys = ("loss", "grad_norm", "rewards/accuracy", "rewards/margin", "kl")
    # At step 1 the policy is its reference: every margin is rounding noise (the two runs pad the
    # pairs differently), so the share of positive margins is a coin toss; the margin itself still
    # has to agree (to within that noise), and the accuracy from step 2 on.
    assert abs(records(tmp_path / "one", "train")[0]["rewards/margin"]) < 1e-4
    assert_same_run(tmp_path / "one", tmp_path / "two", "model.safetensors", keys=keys, mode=mode, not_at_first_step=("rewards/accuracy",))


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_reward_model_two_processes_equal_one(tmp_path, monkeypatch, mode):
    from tether.trainers.rm import RMConfig, run_rm_train

    data = tmp_path / "pairs.jsonl"
    with open(data, "w") as f:
        for i, w in enumerate(WORDS * 2):
            f.write(json.dumps({"prompt": f"Rate the {w} #{i}", "chosen": f"The {w} is good.", "rejected": f"The {w} is poor."}) + "\n")
    monkeypatch.setenv("TETHER_CACHE", str(tmp_path / "cache"))
    extra = {"data.path": str(data)}
    run_rm_train(load_config(RMConfig, None, base_overrides(tmp_path / "one", 2, **extra)))
    torchrun(["rm", "train"], base_overrides(tmp_path / "two", 1, **extra, **{"train.distributed": mode}), tmp_path / "cache")
    assert_same_run(tmp_path / "one", tmp_path / "two", "*.safetensors", mode=mode)  # backbone and reward head
    # The held-out report is computed after training by the main process with the whole model (under
    # FSDP the one gathered for the export, which must also carry the buffers, e.g. rotary frequencies).
    ra, rb = (flat_numbers(json.loads((tmp_path / d / "eval.json").read_text())) for d in ("one", "two"))
    assert ra.keys() == rb.keys() and ra
    assert rb == pytest.approx(ra, rel=1e-4, abs=1e-5)


def flat_numbers(tree, prefix="") -> dict[str, float]:
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in flat_numbers(sub, f"{prefix}{key}/").items()}
    if isinstance(tree, list):
        return {k: v for i, sub in enumerate(tree) for k, v in flat_numbers(sub, f"{prefix}{i}/").items()}
    return {prefix: float(tree)} if isinstance(tree, (int, float)) and not isinstance(tree, bool) else {}


# ---- online: GRPO --------------------------------------------------------------------------------

ONLINE_WORKER = '''
import json, sys
import torch
from tether import parallel
from tether.config import from_dict
import tether.rl.advantages as advantages
from toy_rewards import LowercaseReward

out, algo, mode, stop_at, resume, save_every, steps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5] == "1", int(sys.argv[6]), int(sys.argv[7])
seen = {"texts": [], "scores": [], "advantages": []}

class Recording(LowercaseReward):
    def score(self, prompts, responses):
        if len(seen["texts"]) == stop_at:  # every process, at the same step: a run stopped after step stop_at
            import os
            os._exit(3)
        got = super().score(prompts, responses)
        seen["texts"].append(list(responses))
        seen["scores"].append(got["reward"].tolist())
        return got

original = advantages.group_advantages
def recorded(*args, **kwargs):
    result = original(*args, **kwargs)
    seen["advantages"].append(result.tolist())
    return result
advantages.group_advantages = recorded

import tether.trainers.online_dpo as online_dpo
original_label = online_dpo.label_pairs
def counted(win):
    chosen, rejected, kept = original_label(win)
    seen.setdefault("kept", []).append(int(kept.numel()))  # this process's kept pairs, per step
    return chosen, rejected, kept
online_dpo.label_pairs = counted

class TiesOnRankOne(Recording):
    """Lowercase on rank 0; one score for every reply on rank 1, whose pairs then all tie."""
    def score(self, prompts, responses):
        got = super().score(prompts, responses)
        if parallel.world().rank == 1:
            got["reward"] = torch.zeros_like(got["reward"])
        return got

from tether.trainers.grpo import GRPOConfig, run_grpo
from tether.trainers.nash import NashConfig, run_nash
from tether.trainers.online_dpo import OnlineDPOConfig, run_online_dpo
from tether.trainers.ppo import PPOConfig, run_ppo
from tether.trainers.rloo import RLOOConfig, run_rloo
sections = {
    "model": {"name_or_path": "tiny"},
    "sampling": {"max_new_tokens": 6},
    "data": {"eval_prompts": 0},
    "kl": {"coef": 0.1, "adaptive": True, "target": 0.5, "horizon": 10},
    "train": {"output_dir": out, "max_steps": steps, "progress": False, "save_every": save_every, "threads": 1, "distributed": mode, "resume": resume,
              "prompts_per_step": 4, "samples_per_prompt": 4, "epochs": 2, "minibatch_size": 0, "lr": 3e-3},
}
judged = {"data": {"eval_prompts": 4, "eval_samples": 1}, "sampling": {"max_new_tokens": 6, "temperature": 1.0}}  # a held-out win-rate at the end
one_update = {**sections["train"], "epochs": 1, "minibatch_size": 0}
if algo in ("ppo", "ppo_critic"):  # whitened GAE advantages (mean and variance over both processes), target_kl decided together
    critic = "separate" if algo == "ppo_critic" else "head"
    run_ppo(from_dict(PPOConfig, {**sections, "ppo": {"whiten_advantages": True, "target_kl": 10.0, "critic": critic}}), reward_source=Recording())
elif algo == "nash":  # the policy's replies against the mixture's, judged by the reward compared pairwise
    run_nash(from_dict(NashConfig, {**sections, **judged, "kl": {"coef": 0.1}, "train": {**one_update, "samples_per_prompt": 2}}), reward_source=Recording())
elif algo in ("online_dpo", "online_dpo_ties"):  # pairs of replies labelled by the reward compared pairwise; ties dropped
    # Seed 2: the processes keep 2 and 1 of their 2 pairs at step 1, 0 and 2 at step 2 (a per-process mean would differ).
    source = TiesOnRankOne() if algo == "online_dpo_ties" else Recording()
    run_online_dpo(from_dict(OnlineDPOConfig, {**sections, **judged, "kl": {"coef": 0.0}, "train": {**one_update, "samples_per_prompt": 2, "seed": 2}}), reward_source=source)
elif algo == "rloo":
    run_rloo(from_dict(RLOOConfig, sections), reward_source=Recording())
else:
    run_grpo(from_dict(GRPOConfig, sections), reward_source=Recording())
json.dump(seen, open(f"{out}/seen-rank{parallel.world().rank}.json", "w"))
'''


def run_online_worker(
    out: Path, nproc: int, tmp_path: Path, algo: str = "grpo", mode: str = "ddp", stop_at: int = -1, resume: bool = False, save_every: int = 0, steps: int = 2, timeout: int = 900
) -> list[dict]:
    """``ONLINE_WORKER`` in one process or under torchrun; ``stop_at`` >= 0: every process exits
    (status 3) when step ``stop_at`` + 1 scores its replies, after step ``stop_at``'s checkpoint."""
    script = tmp_path / "online_worker.py"
    script.write_text(ONLINE_WORKER)
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}:{REPO / 'tests'}", "OMP_NUM_THREADS": "1", "TETHER_CACHE": str(tmp_path / "cache")}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)] if nproc > 1 else [sys.executable]
    argv = [str(out), algo, mode, str(stop_at), "1" if resume else "0", str(save_every), str(steps)]
    proc = subprocess.Popen([*launcher, str(script), *argv], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)  # a few seconds when the machine is idle
    except subprocess.TimeoutExpired:
        # SIGTERM, not subprocess.run's SIGKILL: torchrun then stops its workers (each in a
        # process group of its own) instead of leaving them waiting in a collective forever.
        proc.terminate()
        stdout, stderr = proc.communicate(timeout=60)
        pytest.fail(f"{algo} on {nproc} processes did not finish within {timeout} s (a hang?): {stderr[-3000:]}")
    if stop_at >= 0:
        assert proc.returncode != 0 and not (out / "model").exists(), "the run was meant to stop early"
        return []
    assert proc.returncode == 0, stdout[-3000:] + stderr[-5000:]
    return [json.loads((out / f"seen-rank{r}.json").read_text()) for r in range(nproc)]


def interleave_groups(per_rank: list[list], group: int) -> list:
    """Rank r holds the step's prompts r, r + n, r + 2n, ... (parallel.shard), G rows each: put the
    groups back in the step's order."""
    groups = [[rows[i : i + group] for i in range(0, len(rows), group)] for rows in per_rank]
    return [row for k in range(len(groups[0])) for g in groups for row in g[k]]


def test_grpo_two_processes_equal_one(tmp_path):
    """2 processes, each with 2 of the step's 4 prompts (4 replies each): every reply is sampled
    as in the 1-process batch (the sampler draws the whole step's uniforms and keeps its rows), so
    the replies, scores and group advantages (each group whole on one process) are the same; the
    token-mean loss uses the token count of both processes, the gradients are summed, and the KL
    the adaptive controller measures is gathered, so both steps (2 epochs each: the second with
    a ratio != 1) and the weights after them agree; the entropy, approx-KL and clip fraction are
    means over every process's tokens, as on one process."""
    one = run_online_worker(tmp_path / "one", 1, tmp_path)[0]
    two = run_online_worker(tmp_path / "two", 2, tmp_path)
    for step in range(2):
        assert interleave_groups([r["texts"][step] for r in two], 4) == one["texts"][step]
        assert interleave_groups([r["scores"][step] for r in two], 4) == pytest.approx(one["scores"][step], abs=1e-6)
        together = interleave_groups([r["advantages"][step] for r in two], 4)
        assert together == pytest.approx(one["advantages"][step], abs=1e-5)
        assert any(abs(a) > 0.1 for a in together)  # groups whose replies scored differently
    assert_same_run(tmp_path / "one", tmp_path / "two", "model.safetensors", keys=("loss/total", "grad_norm", "reward/mean", "reward/std", "kl/ref", "kl/coef", "advantage/abs_mean", "policy/entropy", "policy/approx_kl", "policy/clip_frac"))


def test_fsdp_run_killed_and_resumed_equals_uninterrupted(demo_file, tmp_path):
    """2 FSDP processes, sharded checkpoints every 2 steps: the whole process group SIGKILLed after a
    checkpoint at step >= 4 and resumed (train.resume=true, same 2 processes) ends with the weights
    of a run never interrupted. Each process restores its own shard of the weights and of AdamW's
    moments from the DCP checkpoint; the data order comes from the step number."""
    import signal
    import time

    steps = 40
    extra = {"data.path": str(demo_file), "train.sample_prompts": "[]", "train.distributed": "fsdp", "train.save_every": "2", "train.max_steps": str(steps), "data.eval_fraction": "0"}
    torchrun(["sft"], base_overrides(tmp_path / "straight", 1, **extra), tmp_path / "cache")

    killed = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1", "TETHER_CACHE": str(tmp_path / "cache")}
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "tether.cli", "sft", *base_overrides(killed, 1, **extra)]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 180
    ckpts = killed / "checkpoints"
    while time.time() < deadline and proc.poll() is None:
        done = [p for p in ckpts.glob("step-*") if (p / "COMPLETE").exists()] if ckpts.exists() else []
        if any(int(p.name.split("-")[1]) >= 4 for p in done):
            break
        time.sleep(0.02)
    assert proc.poll() is None, "training finished before it could be killed: " + proc.stderr.read().decode()[-2000:]
    os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both workers at once
    proc.wait()
    assert not (killed / "model").exists()
    stopped_at = max(int(p.name.split("-")[1]) for p in ckpts.glob("step-*") if (p / "COMPLETE").exists())
    assert stopped_at < steps

    torchrun(["sft"], [*base_overrides(killed, 1, **extra), "train.resume=true"], tmp_path / "cache")
    a, b = weights(tmp_path / "straight" / "model" / "model.safetensors"), weights(killed / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-6, msg=lambda m: f"{name}: {m}")
    resumed = records(killed, "train")
    assert sorted({r["step"] for r in resumed}) == list(range(1, steps + 1))  # both parts of the run logged every step


# over every process's response tokens
PPO_TOKEN_FIGURES = ("policy/entropy", "value/mean", "value/explained_variance", "loss/policy", "loss/value", "policy/approx_kl", "policy/clip_frac", "value/clip_frac")


def test_ppo_two_processes_equal_one(tmp_path):
    """PPO's advantages are whitened over the whole step's response tokens: with the mean and
    variance summed over both processes (``whiten(sum_over=global_sum)``) the 2-process step equals
    the 1-process one (replies, value head and policy update); a per-process whitening would not.
    The logged entropy, value mean and explained variance are over every process's tokens too."""

    one = run_online_worker(tmp_path / "one", 1, tmp_path, "ppo")[0]
    two = run_online_worker(tmp_path / "two", 2, tmp_path, "ppo")
    for step in range(2):
        assert interleave_groups([r["texts"][step] for r in two], 4) == one["texts"][step]
    assert_same_run(tmp_path / "one", tmp_path / "two", "*.safetensors", keys=("loss/total", "grad_norm", "reward/mean", "kl/ref", "kl/coef") + PPO_TOKEN_FIGURES)


# ---- placement and refusals (one process) --------------------------------------------------------


def test_placement_auto_is_float32_on_the_cpu_and_cuda_is_refused_without_a_gpu(capsys):
    from tether.parallel import World, resolve_placement

    w = World(0, 1, 0)
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: auto would pick it")
    p = resolve_placement("auto", "auto", w)
    assert p.device == torch.device("cpu") and p.compute_dtype is None  # nothing changes on the CPU
    assert resolve_placement("cpu", "bfloat16", w).compute_dtype == torch.bfloat16
    assert "slower" in capsys.readouterr().out  # bf16 on a CPU is allowed, with a warning
    with pytest.raises(ValueError, match="model.device='cuda'"):
        resolve_placement("cuda", "auto", w)
    with pytest.raises(ValueError, match="model.dtype"):
        resolve_placement("cpu", "float16", w)


def test_fsdp_is_refused_for_uneven_batches(monkeypatch):
    """Under torchrun (faked: the environment says 2 processes, and joining the group is skipped)."""
    from tether import parallel
    from tether.trainers.distributed import check_mode

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setattr(parallel, "init", lambda backend=None: parallel.World(0, 2, 0))
    check_mode("fsdp", 4, "train.prompts_per_step")
    with pytest.raises(ValueError, match="train.batch_size=3 must be a multiple"):
        check_mode("fsdp", 3, "train.batch_size")
    with pytest.raises(ValueError, match="train.batch_size=1 is smaller"):
        check_mode("ddp", 1, "train.batch_size")
    check_mode("ddp", 3, "train.batch_size")  # data parallel takes uneven shares


def test_one_process_is_untouched_by_the_collectives():
    """In a world of one, gradients and metric sums are left as they are (no torch.distributed call)."""
    from tether.parallel import all_reduce_gradients, sum_metrics

    p = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    p.grad = torch.tensor([0.5, -0.25])
    all_reduce_gradients([p])
    assert p.grad.tolist() == [0.5, -0.25]
    assert sum_metrics({"loss": torch.tensor(1.5), "tokens": 7.0}) == {"loss": 1.5, "tokens": 7.0}


# ---- online under FSDP2 --------------------------------------------------------------------------


@pytest.mark.parametrize("algo", ["grpo", "rloo"])
def test_online_fsdp_two_processes_equal_one(tmp_path, algo):
    """GRPO and RLOO with the policy sharded (FSDP2) over 2 processes: the sampler (a whole copy,
    refreshed from the shards before each rollout) draws the 1-process replies, GRPO's group
    advantages match (RLOO's enter the loss and the weights compared below),
    and the loss and gradient norm of both steps (2 epochs each: the second with a ratio != 1,
    gradients reduce-scattered as sums) and the exported weights equal the 1-process run's. The
    checkpoint is sharded (DCP) and the export consolidated (one model.safetensors)."""
    one = run_online_worker(tmp_path / "one", 1, tmp_path, algo)[0]
    two = run_online_worker(tmp_path / "two", 2, tmp_path, algo, mode="fsdp")
    for step in range(2):
        assert interleave_groups([r["texts"][step] for r in two], 4) == one["texts"][step]
        if algo != "grpo":
            continue
        together = interleave_groups([r["advantages"][step] for r in two], 4)
        assert together == pytest.approx(one["advantages"][step], abs=1e-5)
        assert any(abs(a) > 0.1 for a in together)
    # RLOO's KL is k1 (lp - ref), whose value at step 1 is 0 up to float32 rounding of the summed
    # log-probs (the reference pass runs on each process's half of the batch): compared to 1e-5 only.
    # GRPO's k3 is quadratic in that difference, so its rounding vanishes and it is compared with the rest.
    keys = ("loss/total", "grad_norm", "reward/mean", "kl/coef", "policy/entropy") + (("kl/ref",) if algo == "grpo" else ())
    assert_same_run(tmp_path / "one", tmp_path / "two", "model.safetensors", keys=keys, mode="fsdp")
    ka, kb = ([r["kl/ref"] for r in records(tmp_path / d, "train")] for d in ("one", "two"))
    assert kb == pytest.approx(ka, abs=1e-5)


def test_grpo_fsdp_stopped_and_resumed_equals_uninterrupted(tmp_path):
    """2 FSDP processes, a sharded checkpoint every step: a run whose processes all exit while
    scoring step 3 (after step 2's checkpoint) and is resumed (train.resume=true, 2 processes) ends
    with the weights of a run never interrupted, and logged the same rewards. Each process restores
    its shard of the LoRA weights and of AdamW's moments; the sampler is refreshed from them."""
    steps = 4
    run_online_worker(tmp_path / "straight", 2, tmp_path, mode="fsdp", save_every=1, steps=steps)
    stopped = tmp_path / "stopped"
    run_online_worker(stopped, 2, tmp_path, mode="fsdp", stop_at=2, save_every=1, steps=steps)
    done = sorted(p.name for p in (stopped / "checkpoints").glob("step-*") if (p / "COMPLETE").exists())
    assert done[-1] == "step-0000002" and (stopped / "checkpoints" / done[-1] / "sharded").is_dir()
    run_online_worker(stopped, 2, tmp_path, mode="fsdp", resume=True, save_every=1, steps=steps)
    a, b = weights(tmp_path / "straight" / "model" / "model.safetensors"), weights(stopped / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-6, msg=lambda m: f"{name}: {m}")
    ra, rb = records(tmp_path / "straight", "train"), records(stopped, "train")
    assert [r["step"] for r in rb] == list(range(1, steps + 1))
    assert [r["reward/mean"] for r in rb] == pytest.approx([r["reward/mean"] for r in ra], abs=1e-6)


# ---- PPO, Nash-MD and online DPO on several processes ---------------------------------------------


@pytest.mark.parametrize("algo,mode", [("nash", "fsdp"), ("online_dpo", "fsdp"), ("online_dpo", "ddp"), ("ppo_critic", "fsdp")])
def test_judged_and_ppo_two_processes_equal_one(tmp_path, algo, mode):
    """Nash-MD, online DPO and PPO over 2 processes (FSDP2: PPO's policy, separate critic and value
    head as one sharded root, the critic and head gathered for the export; Nash-MD's mixture and
    reference replies from the whole sampler) equal 1 process. Online DPO's loss is a mean over the kept (untied) pairs of *every* process: at step 1
    the processes keep 2 and 1 pairs, where a per-process mean (L₀/2 + L₁/1, not (L₀ + L₁)/3) would
    give other gradients, and at step 2 none and 2 (the process without pairs still joins the update)."""
    one = run_online_worker(tmp_path / "one", 1, tmp_path, algo)[0]
    two = run_online_worker(tmp_path / "two", 2, tmp_path, algo, mode=mode)
    keys = ("loss/total", "grad_norm", "reward/mean")
    # Figures that are sums of terms which cancel (Nash-MD's loss is Σ advantage·log π with
    # advantages of either sign; DPO's implicit rewards are β·differences of log-prob sums near
    # -30), so float32 rounding shows at about 1e-6 absolute, not relative to the small result.
    cancelling = ("kl/ref",)
    if algo == "online_dpo":
        kept = [r["kept"] for r in two]  # [process][step]
        assert [a + b for a, b in zip(*kept)] == one["kept"]
        assert any(a != b and a and b for a, b in zip(*kept)) and any(not a for a in kept[0] + kept[1]), kept
        keys += ("label/ties", "label/confidence", "label/score_gap", "logps/chosen", "logps/rejected")
        cancelling += ("rewards/margin", "rewards/chosen", "rewards/rejected", "rewards/accuracy")
    if algo == "nash":
        keys = ("grad_norm", "reward/mean", "win/mixture", "win/reference", "policy/entropy")
        cancelling += ("loss/total", "nash/advantage")
    if algo == "ppo_critic":
        keys += PPO_TOKEN_FIGURES
    assert_same_run(tmp_path / "one", tmp_path / "two", "*.safetensors", keys=keys, mode=mode)
    for ra, rb in zip(records(tmp_path / "one", "train"), records(tmp_path / "two", "train")):
        for k in (k for k in cancelling if k in ra or k in rb):
            assert k in ra and k in rb and rb[k] == pytest.approx(ra[k], abs=5e-6), (ra["step"], k, ra.get(k), rb.get(k))
    if algo == "ppo_critic":
        assert_same_weights(tmp_path / "one" / "critic", tmp_path / "two" / "critic", "*.safetensors", 2)  # the critic's backbone and value head
    else:
        sa, sb = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("one", "two"))
        assert sb["held_out/win_rate_vs_reference"] == pytest.approx(sa["held_out/win_rate_vs_reference"], abs=1e-6)


def test_online_dpo_with_every_pair_tied_on_one_process_does_not_hang(tmp_path):
    """Data parallel online DPO where rank 1's pairs all tie at every step: at step 1 rank 0 keeps
    pairs and rank 1 none, and rank 1 still takes part in the update (a zero share of the loss, the
    gradients' all-reduce), so both processes finish (a process that skipped the update would leave
    the other waiting in the all-reduce until the timeout); at step 2 no process keeps a pair and
    all of them skip the update together."""
    two = run_online_worker(tmp_path / "two", 2, tmp_path, "online_dpo_ties", mode="ddp", timeout=180)  # a few seconds unless it hangs
    assert two[0]["kept"] == [2, 0] and two[1]["kept"] == [0, 0]
    first, second = records(tmp_path / "two", "train")
    assert first["label/ties"] == 0.5 and first["grad_norm"] > 0
    assert second["label/ties"] == 1.0 and "grad_norm" not in second


def test_ppo_fsdp_stopped_and_resumed_equals_uninterrupted(tmp_path):
    """PPO under FSDP2: the sharded checkpoint holds the policy, the value head and AdamW's moments
    of both; a run stopped after step 2's checkpoint and resumed on 2 processes ends with the
    weights and value head of a run never interrupted (the value head gathered for the export)."""
    steps = 3
    run_online_worker(tmp_path / "straight", 2, tmp_path, "ppo", mode="fsdp", save_every=1, steps=steps)
    stopped = tmp_path / "stopped"
    run_online_worker(stopped, 2, tmp_path, "ppo", mode="fsdp", stop_at=2, save_every=1, steps=steps)
    assert (stopped / "checkpoints" / "step-0000002" / "sharded").is_dir()
    run_online_worker(stopped, 2, tmp_path, "ppo", mode="fsdp", resume=True, save_every=1, steps=steps)
    for name in ("model.safetensors", "value_head.safetensors"):
        a, b = weights(tmp_path / "straight" / "model" / name), weights(stopped / "model" / name)
        assert a.keys() == b.keys() and a
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6, msg=lambda m: f"{name}/{key}: {m}")
