"""The start and end of an online RL run, and the bookkeeping around each step; the loop in
between belongs to each algorithm (``tether.trainers.ppo``, ``grpo``, ``rloo``).

A run is set up once (``start_run``: policy, reference, reward sources, prompts), then every step
``collect``s its replies and scores (``tether.trainers.online.rollout``), the algorithm computes
advantages and updates the policy (``tether.trainers.online.update.optimizer_step``), and
``StepState`` logs, checkpoints and watches the time budget; at the end ``StepState.finish``
evaluates on held-out prompts and saves the model and summary. Nothing here imports an algorithm.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from tether.trainers.online.batch import ResponseBatch
from tether.trainers.online.config import KLConfig
from tether.trainers.online.reference import Reference, uses_reference
from tether.trainers.online.rollout import load_prompts, load_reward, sampling_params


def make_kl_controller(cfg: KLConfig):
    from tether.rl.kl import AdaptiveKLController, FixedKLController

    return AdaptiveKLController(cfg.coef, cfg.target, cfg.horizon) if cfg.adaptive else FixedKLController(cfg.coef)


class Timer:
    """Seconds per phase of a step: ``with timer("generate"): ...``."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def metrics(self) -> dict[str, float]:
        return {f"time/{k}": v for k, v in self.seconds.items()}


def rollout_metrics(rollout, scores: torch.Tensor, kl: torch.Tensor | None, gold: torch.Tensor | None) -> dict[str, float]:
    """What practitioners watch about the samples themselves. ``kl`` [B, Tr] is None when the run
    has no reference (β = 0): ``kl/ref`` is then left out rather than logged as a made-up 0.
    Under torchrun the per-response figures of every process are gathered first, so the metrics
    (and the adaptive KL controller, which reads ``kl/ref``) see the whole step."""
    from tether.parallel import gather_rows

    scores = gather_rows(scores)  # [B] of all processes
    lengths = gather_rows(rollout.response_mask.sum(1).float())  # [B]
    out = {
        "reward/mean": float(scores.mean()),
        "reward/std": float(scores.std()) if scores.numel() > 1 else 0.0,
        "response/length": float(lengths.mean()),
        "response/finished": float(gather_rows(rollout.finished.float()).mean()),
    }
    if kl is not None:
        out["kl/ref"] = float(gather_rows(kl.sum(1)).mean())  # per response, summed over its tokens
    if gold is not None:
        out["gold/mean"] = float(gather_rows(gold).mean())
    return out


def evaluate_held_out(model, tokenizer, prompts, source, gold, params, samples: int, seed: int, reference: Reference | None, temperature: float, chunk_size: int) -> dict[str, float]:
    """Mean reward (and gold reward, and KL to the reference) on held-out prompts."""
    from tether.evaluate.online import mean_reward
    from tether.rollout.engine import pad_token_id

    def ref_fn(rollout):
        return reference.logprobs(model, ResponseBatch.from_rollout(rollout, pad_token_id(tokenizer)), temperature, chunk_size)

    return mean_reward(model, tokenizer, prompts, source, params, samples, seed=seed, gold=gold, reference_logprobs=ref_fn if reference is not None else None)


def print_monitor_warnings(logger, warnings) -> None:
    for w in warnings:
        logger.warn(w.line())


def checkpoint_extra(kl_ctl, monitors, history: dict[str, list[float]], before: dict | None) -> dict:
    return {"kl_controller": kl_ctl.state_dict(), "monitors": monitors.state_dict(), "history": history, "eval_before": before}


def trim_history(history: dict[str, list[float]], steps: int) -> None:
    for values in history.values():
        del values[steps:]


def prepare_output(output_dir: str, resume: bool, keep: int = 2, sharded: bool = False):
    """(Checkpointer, latest checkpoint or None); a fresh run clears an earlier run's state.
    ``sharded``: FSDP, every process writes its shard (``ShardedCheckpointer``)."""
    from tether.trainers.distributed import open_run_checkpoints

    return open_run_checkpoints(output_dir, resume, keep, sharded=sharded)


def resume_or_begin(checkpoints, latest, modules, optimizer, scheduler, kl_ctl, monitors) -> tuple[int, dict[str, list[float]], dict | None]:
    """Restore a run from ``latest`` (or start at step 0): (start step, metric history, held-out figures before training)."""
    if latest is None:
        return 0, {}, None
    start_step, extra = checkpoints.load(latest, modules, optimizer, scheduler)
    kl_ctl.load_state_dict(extra["kl_controller"])
    monitors.load_state_dict(extra["monitors"])
    history, before = extra["history"], extra["eval_before"]
    trim_history(history, start_step)
    print(f"resumed from {latest} at step {start_step}")
    return start_step, history, before


@dataclass
class RunSetup:
    policy: torch.nn.Module
    tokenizer: object
    reference: Reference | None  # None when the KL coefficient is fixed at 0 (see uses_reference)
    source: object
    gold: object | None
    train_prompts: list
    eval_prompts: list
    params: object  # SamplingParams
    plan: object  # StepPlan over train prompts
    pad_id: int
    shards: object  # PolicyShards: how the policy trains (FSDP or not) and the copy that samples

    @property
    def sampler(self) -> torch.nn.Module:
        """The whole policy that generates, runs the reference and is exported (``policy`` itself
        unless FSDP shards it; then refreshed by ``shards.sync_sampler``)."""
        return self.shards.sampler


def start_run(cfg, reward_source=None, gold_source=None, wrap=None) -> RunSetup:
    """Seed, load the policy (and its reference, before any checkpoint changes the weights),
    the reward sources and the prompts. No reference is built when ``cfg.kl`` never needs one.
    ``wrap(policy)``: the module the run trains around the policy (PPO's policy + value head +
    critic; the policy itself when None). Under ``train.distributed=fsdp`` it is sharded here,
    before any optimiser sees it (``PolicyShards``)."""
    from tether.config import save_yaml
    from tether.rollout.engine import pad_token_id
    from tether.trainers.common import StepPlan, configure_threads, load_trainable_model, set_seed
    from tether.trainers.distributed import check_mode
    from tether.trainers.online.update import check_online_split

    configure_threads(cfg.train.threads)
    set_seed(cfg.train.seed)
    out = Path(cfg.train.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_yaml(cfg, out / "config.yaml")
    policy, tokenizer = load_trainable_model(cfg.model, cfg.lora, cfg.train.seed)
    from tether.trainers.online.sharding import PolicyShards

    check_mode(cfg.train.distributed, cfg.train.prompts_per_step, "train.prompts_per_step")
    check_online_split(cfg.train.prompts_per_step, cfg.train.minibatch_size)
    reference = Reference(cfg.kl.reference, policy, cfg.lora.enabled) if uses_reference(cfg.kl) else None  # a copy: of the unsharded policy
    shards = PolicyShards(policy, cfg.train.distributed, wrap(policy) if wrap is not None else None)
    source = reward_source if reward_source is not None else load_reward(cfg.reward.source, cfg.reward.uncertainty_penalty)
    gold = gold_source if gold_source is not None else (load_reward(cfg.reward.gold) if cfg.reward.gold else None)
    train_prompts, eval_prompts = load_prompts(cfg.data)
    plan = StepPlan(len(train_prompts), cfg.train.prompts_per_step, 1.0, cfg.train.max_steps, cfg.train.seed)
    return RunSetup(policy, tokenizer, reference, source, gold, train_prompts, eval_prompts, sampling_params(cfg.sampling), plan, pad_token_id(tokenizer), shards)


def held_out(run: RunSetup, cfg) -> dict[str, float] | None:
    """The held-out evaluation; under torchrun the main process alone runs it (it only reads the
    weights: the sampler's, which every process refreshes first under FSDP)."""
    from tether.parallel import is_main

    run.shards.sync_sampler()  # a collective under FSDP: before any process leaves
    if not run.eval_prompts or cfg.data.eval_samples <= 0 or not is_main():
        return None
    return evaluate_held_out(
        run.sampler, run.tokenizer, run.eval_prompts, run.source, run.gold, run.params, cfg.data.eval_samples, cfg.data.split_seed, run.reference, cfg.sampling.temperature, cfg.model.chunk_size
    )


def log_step(logger, history: dict[str, list[float]], monitors, step: int, metrics: dict[str, float]) -> None:
    """Append to the history, write the log line, run the monitors and print what fires."""
    for k, v in metrics.items():
        history.setdefault(k, []).append(float(v))
    logger.log(step, metrics)
    print_monitor_warnings(logger, monitors.check(step, history))
    kl = f" kl {metrics['kl/ref']:.2f}" if "kl/ref" in metrics else ""
    logger.advance(step, info=f"reward {metrics['reward/mean']:+.3f}{kl}")


def out_of_time(cfg, loop_started: float) -> bool:
    budget = cfg.train.max_minutes
    return budget is not None and (time.time() - loop_started) / 60 >= budget


class StepState:
    """What an online run carries from step to step besides the weights, and the bookkeeping
    around each step: resume (or the held-out evaluation before training), logging and
    monitors, the KL controller's update, periodic and final checkpoints, the time budget.
    ``modules`` is what checkpoints hold (the policy, or PPO's policy + value head)."""

    def __init__(self, run: RunSetup, cfg, modules, optimizer, scheduler, kl_ctl, title: str, started: float):
        from tether.evaluate.monitors import Monitors
        from tether.trainers.distributed import open_logger

        t = cfg.train
        if run.shards.sharded and modules is not run.shards.trained:
            raise ValueError(f"{title}: under train.distributed=fsdp the checkpoints hold what start_run sharded (its wrap), not another module")
        modules = run.shards.checkpointed if run.shards.sharded else modules  # FSDP: the root, whose state is sharded
        self.run, self.cfg, self.modules, self.title = run, cfg, modules, title
        self.optimizer, self.scheduler, self.kl_ctl = optimizer, scheduler, kl_ctl
        self.started = started  # before loading: the summary's seconds count the whole run
        self.monitors = Monitors(t.monitor_window)
        self.evaluator = build_evaluator(run, cfg)  # before the checkpoint is loaded: the policy is still the starting model
        self.checkpoints, latest = prepare_output(t.output_dir, t.resume, t.keep_checkpoints, sharded=run.shards.sharded)
        self.start_step, self.history, self.before = resume_or_begin(self.checkpoints, latest, modules, optimizer, scheduler, kl_ctl, self.monitors)
        if self.evaluator is not None:
            self.evaluator.start_step = self.start_step  # evaluations up to the checkpoint's step ran before it was written
        if self.start_step == 0:
            self.before = held_out(run, cfg)
            if self.before:
                print(f"held-out before training: {self.before}")
        self.logger = open_logger(t.output_dir, t.max_steps, self.start_step, t.progress, title)
        self.done = self.start_step
        self.loop_started = time.time()

    def _save(self) -> None:
        from tether.trainers.distributed import save_checkpoint

        save_checkpoint(self.checkpoints, self.done, self.modules, self.optimizer, self.scheduler, checkpoint_extra(self.kl_ctl, self.monitors, self.history, self.before))

    def end_step(self, step: int, metrics: dict[str, float], samples: int) -> bool:
        """Log step ``step`` (0-based) and checkpoint when due; True when ``train.max_minutes`` is spent."""
        t = self.cfg.train
        from tether.parallel import world

        if "kl/ref" in metrics:  # absent only without a reference, where β stays 0
            self.kl_ctl.update(metrics["kl/ref"], samples * world().size)  # samples: this process's; every process has as many
        log_step(self.logger, self.history, self.monitors, step + 1, metrics)
        self.done = step + 1
        if self.evaluator is not None:
            self.evaluator.maybe(self.done, self.run.policy, self.logger)
        if out_of_time(self.cfg, self.loop_started):
            self.logger.print(f"train.max_minutes={t.max_minutes} reached after step {self.done}; stopping")
            return True
        if t.save_every and self.done % t.save_every == 0 and self.done < t.max_steps:
            self._save()
        return False

    def finish(self) -> dict:
        """The last checkpoint, the held-out evaluation after training, the saved model and summary."""
        extra = None
        if self.evaluator is not None:  # before the last checkpoint, as every evaluation precedes its step's checkpoint
            self.evaluator.maybe(self.done, self.run.policy, self.logger, final=True)
            extra = self.evaluator.summary_rows()
        self._save()
        return finish_run(self.run, self.cfg, self.logger, self.history, self.monitors, self.before, self.started, self.title, self.done, extra)


def build_evaluator(run: RunSetup, cfg):
    """``policy_eval``'s evaluator (None when off) on the run's own held-out prompts unless
    ``policy_eval.prompts`` names others; the reference the run holds serves as the starting model."""
    from tether.evaluate.periodic import build_policy_evaluator

    held = run.reference.frozen if run.reference is not None else None
    split = {"path": cfg.data.path, "eval_prompts": cfg.data.eval_prompts, "split_seed": cfg.data.split_seed}
    return build_policy_evaluator(cfg.policy_eval, cfg.train.output_dir, run.policy, run.tokenizer, held_reference=held, held_out=run.eval_prompts, data_split=split, distributed=cfg.train.distributed)


def finish_run(run: RunSetup, cfg, logger, history, monitors, before, started: float, title: str, steps_done: int, extra: dict | None = None) -> dict:
    """Held-out evaluation after training, the final model in HF format, summary.json."""
    from tether.models import save_model
    from tether.trainers.distributed import save_final_model

    logger.close()
    after = held_out(run, cfg)  # refreshes the sampler under FSDP: it is the consolidated model saved next
    out = Path(cfg.train.output_dir)
    save_final_model(save_model, run.sampler, run.tokenizer, out / "model")
    rows: dict = {"algorithm": title, "steps": steps_done, "seconds": round(time.time() - started, 1)}
    for name, report in (("before", before), ("after", after)):
        for k, v in (report or {}).items():
            rows[f"held_out/{name}/{k}"] = v
    for k, series in history.items():
        if series:
            rows[f"last/{k}"] = series[-1]
    rows.update(extra or {})
    rows["monitor_warnings"] = monitors.summary()
    logger.summary(f"{title} summary", rows)
    print(f"saved model to {out / 'model'}")
    return rows


__all__ = [
    "RunSetup",
    "StepState",
    "Timer",
    "evaluate_held_out",
    "finish_run",
    "held_out",
    "log_step",
    "make_kl_controller",
    "out_of_time",
    "rollout_metrics",
    "start_run",
]
