"""The training loop for objectives computed from a fixed data set: SFT, the DPO family, reward models.

An objective says how to count the units a step's loss is averaged over (completion tokens for
SFT, pairs for DPO) and how to compute the summed loss of a micro-batch. The loop divides every
micro-batch's sum by the *step's* unit count before backward, so gradient accumulation gives the
same gradient as one big batch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from tether.config import TrainConfig
from tether.trainers.common import (
    StepPlan,
    build_optimizer,
    build_scheduler,
    checkpoint_step,
    configure_threads,
    ensure_finite,
    micro_batches,
    set_seed,
    trainable_parameters,
)


@dataclass
class Example:
    """One training example: one or more token sequences that its loss needs together."""

    sequences: list[tuple[list[int], int]]  # (input_ids, prompt_len) per slot
    extra: dict[str, Any] = field(default_factory=dict)  # label, margin, cached reference log-probs, ...

    @property
    def num_tokens(self) -> int:
        return sum(len(ids) for ids, _ in self.sequences)


class Objective(Protocol):
    """What the loop asks of a training objective. An objective may also define
    ``prepare(model, examples)``: called once, before any step or checkpoint changes the weights,
    with every example the run will use in the order it uses them (a cached reference fills in
    what it lacks there)."""

    def units(self, examples: list[Example]) -> float:
        """How many units (tokens, pairs, ...) the step's loss is the mean over."""

    def loss(self, model: torch.nn.Module, examples: list[Example]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Summed loss over the micro-batch's units, and metrics summed over the same units."""


@dataclass
class FitResult:
    steps: int
    train_metrics: dict[str, float]
    eval_metrics: dict[str, float]
    seconds: float
    tokens: int
    model: Any = None  # the trained model, whole (under FSDP: gathered on the main process, None elsewhere)


def evaluate(model: torch.nn.Module, objective: Objective, examples: list[Example], micro_batch_size: int, dist=None) -> dict[str, float]:
    """Unit-weighted means of the loss and metrics over ``examples``; each process scores its share
    (``parallel.shard``) and the sums are added over processes once at the end. ``dist``: the run's
    ``trainers.distributed.Distributed`` (None: the model as it is)."""
    import math

    from tether import parallel

    if not examples:
        return {}
    run = dist.run if dist is not None else (lambda fn, *args: fn(model, *args))
    was_training = model.training
    model.eval()
    share = parallel.shard(examples)
    sums: dict[str, torch.Tensor | float] = {"units": float(objective.units(share)) if share else 0.0}
    with torch.no_grad():
        lengths = [e.num_tokens for e in share]
        rounds = 0
        for mb in micro_batches(list(range(len(share))), micro_batch_size, lengths):
            batch = [share[i] for i in mb]
            with parallel.autocast():
                loss_sum, metric_sums = run(objective.loss, batch)
            add_sums(sums, loss_sum, metric_sums)
            rounds += 1
        if dist is not None and dist.lockstep:  # a process with a shorter share joins the others' passes, discarding the result
            most = math.ceil(math.ceil(len(examples) / parallel.world().size) / micro_batch_size)
            for _ in range(most - rounds):
                with parallel.autocast():
                    run(objective.loss, examples[:1])
    model.train(was_training)
    totals = parallel.sum_metrics(sums)
    units = totals.pop("units")
    return {k: v / max(units, 1e-12) for k, v in totals.items()}


def add_sums(sums: dict, loss_sum: torch.Tensor, metric_sums: dict) -> None:
    """Accumulate a micro-batch's summed loss and metrics without leaving the device (no host sync)."""
    sums["loss"] = sums.get("loss", 0.0) + loss_sum.detach().to(torch.float64)  # float64: as the Python floats it replaces
    for k, v in metric_sums.items():
        sums[k] = sums.get(k, 0.0) + (v.detach().to(torch.float64) if isinstance(v, torch.Tensor) else v)


def bound_evaluation(eval_examples: list[Example], limit: int | None, seed: int) -> tuple[list[Example], str | None]:
    """At most ``limit`` of ``eval_examples``: a seeded subset kept in file order, and the line that
    says so (None when every example is used)."""
    if limit is None or len(eval_examples) <= limit:
        return eval_examples, None
    keep = sorted(torch.randperm(len(eval_examples), generator=torch.Generator().manual_seed(seed))[:limit].tolist())
    return [eval_examples[i] for i in keep], f"evaluation: {limit} of {len(eval_examples)} held-out examples (train.eval_examples={limit}; null evaluates all)"


def clock() -> float:
    """Seconds for ``train.max_minutes`` (a function of its own so tests can advance it)."""
    return time.monotonic()


def out_of_budget(max_minutes: float | None, loop_started: float) -> bool:
    """Whether ``train.max_minutes`` of the training loop are spent; under torchrun the main
    process's clock decides for every process, so all stop after the same step."""
    from tether import parallel

    if max_minutes is None:
        return False
    return bool(parallel.broadcast_object((clock() - loop_started) / 60 >= max_minutes))


def fit(
    model: torch.nn.Module,
    objective: Objective,
    train: list[Example],
    eval_examples: list[Example],
    cfg: TrainConfig,
    title: str = "train",
    report: list[str] | None = None,
    policy_eval=None,
) -> FitResult:
    """Train ``model`` on ``train`` with ``objective``; checkpoints, exact resume, logs, evaluation.

    ``report``: the data preparation's lines (already printed), kept in ``summary.json``.
    ``policy_eval``: a ``tether.evaluate.periodic.PolicyEvaluator`` (built before this call, while
    the model is the starting one), run every ``policy_eval.every`` steps and after the last.
    ``cfg.max_minutes``: the loop stops after the step that crosses the budget; that step is then
    the last (evaluated, checkpointed, recorded in ``summary.json`` as ``stopped_by_max_minutes``)."""
    from tether import parallel
    from tether.trainers.distributed import Distributed, check_mode, open_logger, open_run_checkpoints, save_checkpoint

    configure_threads(cfg.threads)
    set_seed(cfg.seed)
    check_mode(cfg.distributed, cfg.batch_size, "train.batch_size")
    report = list(report or [])
    plan = StepPlan(len(train), cfg.batch_size, cfg.epochs, cfg.max_steps, cfg.seed)
    eval_examples, bounded = bound_evaluation(eval_examples, cfg.eval_examples, cfg.seed)
    if bounded:
        print(bounded)
        report.append(bounded)
    dist = Distributed(model, cfg.distributed)  # FSDP shards the model here, before the optimiser sees its parameters
    saved = dist.root if dist.sharded else model  # what checkpoints hold
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, plan.total_steps, cfg)
    checkpoints, latest = open_run_checkpoints(cfg.output_dir, cfg.resume, cfg.keep_checkpoints, sharded=dist.sharded)
    params = list(trainable_parameters(model).values())
    lengths = [e.num_tokens for e in train]

    start_step = checkpoint_step(latest) if latest is not None else 0
    prepare = getattr(objective, "prepare", None)
    if prepare is not None:  # before the checkpoint's weights are loaded: the model is still the initial one
        steps_left = [train[i] for step in range(start_step, plan.total_steps) for i in plan.indices(step)]
        prepare(model, steps_left + eval_examples, dist)  # under torchrun a shared pass: each process computes its share
    if latest is not None:
        start_step, _ = checkpoints.load(latest, saved, optimizer, scheduler)

    if policy_eval is not None:
        policy_eval.start_step = start_step  # evaluations up to the checkpoint's step were run before it was written
    logger = open_logger(cfg.output_dir, plan.total_steps, start_step, cfg.progress, title)
    model.train()
    started = time.time()
    tokens_seen = 0
    last_train: dict[str, float] = {}
    last_eval: dict[str, float] = {}
    last_step, stopped = start_step, False  # the last step done; whether the time budget ended the loop
    loop_started = clock()
    try:
        for step in range(start_step, plan.total_steps):
            step_start = time.time()
            indices = plan.indices(step)
            # The normaliser is the *global* batch's unit count (every process holds the whole data
            # set, so it is counted here without communication); each process trains its share.
            total_units = objective.units([train[i] for i in indices])
            sums: dict[str, torch.Tensor | float] = {"tokens": 0.0}
            for mb in micro_batches(parallel.shard(indices), cfg.micro_batch_size, lengths):
                batch = [train[i] for i in mb]
                with parallel.autocast():
                    loss_sum, metric_sums = dist.run(objective.loss, batch)
                (loss_sum / total_units).backward()
                add_sums(sums, loss_sum, metric_sums)
                sums["tokens"] += sum(e.num_tokens for e in batch)
            dist.sync_gradients(params)
            totals = parallel.sum_metrics(sums)  # the step's one host sync for metrics
            step_tokens = int(totals.pop("tokens"))
            metrics = {k: v / total_units for k, v in totals.items()}
            ensure_finite(metrics["loss"], step + 1)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf"))
            grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)  # a DTensor under FSDP
            ensure_finite(grad_norm, step + 1, "gradient norm")
            metrics["lr"] = optimizer.param_groups[0]["lr"]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

            elapsed = time.time() - step_start
            tokens_seen += step_tokens
            metrics.update(grad_norm=grad_norm, tokens_per_second=step_tokens / max(elapsed, 1e-9), epoch=plan.epoch_at(step + 1))
            last_train = metrics
            done = last_step = step + 1
            stopped = done < plan.total_steps and out_of_budget(cfg.max_minutes, loop_started)
            if done % cfg.log_every == 0 or done == plan.total_steps or stopped:
                logger.log(done, metrics)
            logger.advance(done, info=f"loss {metrics['loss']:.4f}", rate=f"{metrics['tokens_per_second']:.0f} tok/s")
            if stopped:  # this step is the last: evaluated and saved below, as the last step of the plan would be
                logger.print(f"train.max_minutes={cfg.max_minutes} reached after step {done} of {plan.total_steps}; stopping")
                break
            if cfg.eval_every and done % cfg.eval_every == 0 and done < plan.total_steps and eval_examples:
                last_eval = evaluate(model, objective, eval_examples, cfg.micro_batch_size, dist)
                logger.log(done, last_eval, split="eval")
                logger.print(f"step {done}: eval loss {last_eval['loss']:.4f}")
            if policy_eval is not None and done < plan.total_steps:
                policy_eval.maybe(done, model, logger)
            if cfg.save_every and done % cfg.save_every == 0 and done < plan.total_steps:
                save_checkpoint(checkpoints, done, saved, optimizer, scheduler)
        if eval_examples:
            last_eval = evaluate(model, objective, eval_examples, cfg.micro_batch_size, dist)
            logger.log(last_step, last_eval, split="eval")
        if policy_eval is not None:  # before the last checkpoint, as every evaluation precedes its step's checkpoint
            policy_eval.maybe(last_step, model, logger, final=True)
        if start_step < last_step:
            save_checkpoint(checkpoints, last_step, saved, optimizer, scheduler)
    finally:
        logger.close()
    seconds = time.time() - started
    result = FitResult(last_step, last_train, last_eval, seconds, tokens_seen, dist.full_model())
    rows: dict[str, Any] = {"steps": last_step, "resumed from step": start_step, "seconds": round(seconds, 1)}
    if cfg.max_minutes is not None:
        rows.update(max_minutes=cfg.max_minutes, stopped_by_max_minutes=stopped, planned_steps=plan.total_steps)
    if tokens_seen:
        rows["tokens/s"] = round(tokens_seen / max(seconds, 1e-9), 1)
    rows.update({f"train {k}": v for k, v in last_train.items() if k in ("loss", "accuracy", "margin")})
    rows.update({f"eval {k}": v for k, v in last_eval.items()})
    if policy_eval is not None:
        rows.update(policy_eval.summary_rows())
    logger.summary(f"{title} summary", rows, {"data report": report} if report else None)
    return result
