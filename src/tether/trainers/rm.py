"""Reward-model training: ``tether rm train`` (config, loss table, data preparation, the run).

Evaluation and scoring of a saved model (``tether rm eval | score``) live in
``tether.evaluate.reward_model``; the command-line parsing in ``tether.cli``.

Training runs the shared offline loop (``tether.trainers.offline.fit``). One forward pass scores
every sequence of a micro-batch: both sides of a pair, or all K completions of a ranking, which
train through Plackett–Luce as one list rather than being split into pairs. Each example may
belong to a named objective (an ``objective`` field on the row, or a data file per objective); its
loss reads that objective's head column.
An ensemble trains its members one after the other, each with its own seed, bootstrap resample
and checkpoint directory, so an interrupted run resumes member by member.
"""

from __future__ import annotations

import enum
import json
import random
from dataclasses import dataclass, field, replace
from pathlib import Path

from tether.config import DataConfig, LoRAConfig, ModelConfig, TrainConfig, choices, opt, save_yaml
from tether.data.layouts import Layout, collate_layout, resolve_layout
from tether.models.reward import Pooling
from tether.trainers.offline import Example


class RewardLoss(enum.Enum):
    BRADLEY_TERRY = "bradley_terry"
    PLACKETT_LUCE = "plackett_luce"


RewardLossName = choices(RewardLoss, "auto")
PoolingName = choices(Pooling)


@dataclass
class RewardSection:
    objectives: list[str] = opt(["reward"], "Names of the reward heads, e.g. [helpful, harmless, honest]. One output per name.")
    objective_data: list[str] = opt([], "Training data per objective, in the order of rm.objectives. Empty: data.path, whose rows name their head in an 'objective' field when there are several.")
    objective_eval_data: list[str] = opt([], "Evaluation data per objective (optional; else data.eval_fraction of each file is held out).")
    weights: list[float] = opt([], "Default weight of each objective when scores are combined (empty: equal weights). Callers may pass other weights at scoring time.")
    loss: RewardLossName = opt("auto", "auto: Bradley-Terry when every example is a pair, Plackett-Luce over whole rankings otherwise.")
    use_margin: bool = opt(True, "Use a pair's 'margin' field as the required reward gap in Bradley-Terry (pairs without one get 0).")
    share_prompt: bool = opt(True, "Run each pair's or ranking's prompt through the model once, its completions branching off it (exact: same rewards as separate sequences, fewer tokens, no padding). false: data.pack decides between padded and packed rows.")
    centering_coef: float = opt(0.01, "Weight of the centring term (sum of an example's rewards)^2 that keeps rewards near zero.")
    ensemble_size: int = opt(1, "Members of a reward ensemble (1: a single reward model). With LoRA the members share one frozen backbone.")
    bootstrap: bool = opt(True, "Train each ensemble member on a bootstrap resample (with replacement) of the training data.")
    penalty: float = opt(1.0, "lambda of the uncertainty-penalised reward mean - lambda * std, stored with an ensemble.")
    pooling: PoolingName = opt("last", "What the head reads: the final hidden state at the response's last token, or the mean over the response's tokens.")
    layers: int = opt(0, "Keep only the backbone's first N decoder layers (0: all). A cut backbone trains and scores in a fraction of the time; early layers suffice for lexical judgements such as sentiment. The saved model is the cut one.")


@dataclass
class RMConfig:
    """Reward-model training from preference pairs or rankings."""

    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(path="bundled:preferences", eval_fraction=0.1))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(output_dir="runs/rm", lr=1e-5, batch_size=8, micro_batch_size=8, sample_prompts=[]))
    rm: RewardSection = field(default_factory=RewardSection)


def _bradley_terry(scores, mask, margins, centering_coef):
    from tether.losses.reward import bradley_terry_loss

    return bradley_terry_loss(scores[:, 0], scores[:, 1], margin=margins, centering_coef=centering_coef)


def _plackett_luce(scores, mask, margins, centering_coef):
    from tether.losses.reward import plackett_luce_loss

    return plackett_luce_loss(scores, mask, centering_coef=centering_coef)


# Each loss: (scores [N, K] best first, mask [N, K], margins [N] or None, centring) -> (losses [N], metric means).
REWARD_LOSSES = {RewardLoss.BRADLEY_TERRY: _bradley_terry, RewardLoss.PLACKETT_LUCE: _plackett_luce}


def resolve_loss(name: str, examples: list[Example]) -> RewardLoss:
    if name != "auto":
        loss = RewardLoss(name)
    else:
        loss = RewardLoss.BRADLEY_TERRY if all(len(e.sequences) == 2 for e in examples) else RewardLoss.PLACKETT_LUCE
    if loss is RewardLoss.BRADLEY_TERRY and any(len(e.sequences) != 2 for e in examples):
        raise ValueError("rm.loss=bradley_terry needs pairs, but the data holds rankings; use rm.loss=plackett_luce (or auto)")
    return loss


@dataclass
class RewardObjective:
    """Loss per example (pair or ranking); the loop averages over examples."""

    loss_kind: RewardLoss
    pad_id: int
    use_margin: bool = True
    centering_coef: float = 0.0
    layout: Layout = Layout.PADDED
    row_tokens: int = 512

    def units(self, examples: list[Example]) -> float:
        return float(len(examples))

    def loss(self, model, examples: list[Example]):
        import torch

        from tether.parallel import device

        batch = collate_layout(self.layout, [e.sequences for e in examples], self.pad_id, self.row_tokens).to(device())
        rewards = model(batch).float()  # [S, O], S = sum of the examples' slot counts; float32 for the loss under bf16 autocast
        dev = rewards.device
        sizes = [len(e.sequences) for e in examples]
        n, k = len(examples), max(sizes)
        # Slot j of example i sits at flat sequence offset[i] + j (collate is example-major).
        offsets = torch.tensor([0, *sizes[:-1]], device=dev).cumsum(0)  # [N]
        slot = torch.arange(k, device=dev)  # [K]
        mask = slot.unsqueeze(0) < torch.tensor(sizes, device=dev).unsqueeze(1)  # [N, K]
        flat = (offsets.unsqueeze(1) + slot.unsqueeze(0)).clamp(max=rewards.shape[0] - 1)  # [N, K]
        objective = torch.tensor([int(e.extra.get("objective", 0)) for e in examples], device=dev)  # [N]
        scores = rewards[flat, objective.unsqueeze(1).expand(n, k)]  # [N, K], this example's head
        scores = torch.where(mask, scores, torch.zeros((), dtype=scores.dtype))
        margins = None
        if self.use_margin and any("margin" in e.extra for e in examples):
            margins = torch.tensor([float(e.extra.get("margin", 0.0)) for e in examples], dtype=scores.dtype, device=dev)  # [N]
        losses, metrics = REWARD_LOSSES[self.loss_kind](scores, mask, margins, self.centering_coef)  # [N], means
        # The loop wants sums over units (examples); the loss functions return batch means.
        return losses.sum(), {name: value.detach() * n for name, value in metrics.items()}


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def _data_kind(path: str) -> str:
    from tether.data import load_records

    return load_records(path, kind="auto", on_error="skip").kind


def objective_labels(path: str, objectives: list[str], fixed: str | None = None, on_error: str = "raise", split: str = "train"):
    """Head index of each row of ``path`` from its ``objective`` field: ``({line: index}, errors)``.

    One file may carry labels for several heads: each row is a pair or a ranking plus
    ``"objective": "<name>"``, the head its preference is about (the same two replies may appear
    in several rows, once per objective, with different winners). Returns ``(None, [])`` when no
    row has the field. ``fixed``: the objective every row of this file belongs to (a file given in
    ``rm.objective_data``); a row naming another is an error. Malformed rows raise a DataError
    naming file, line and field, or with ``on_error="skip"`` come back in ``errors``.
    """
    from tether.data.errors import DataError
    from tether.data.readers import read_rows

    labels: dict[int, int] = {}
    errors: list[DataError] = []
    seen_field = False
    rows = [(source, row) for source, row in read_rows(path, split) if isinstance(row, dict)]
    for source, row in rows:
        value = row.get("objective")
        seen_field |= value is not None
        if value is None:
            if fixed is not None:
                labels[source.line] = objectives.index(fixed)
            continue
        reason = None
        if not isinstance(value, str):
            reason = f"expected the name of an objective (text), got {type(value).__name__}"
        elif value not in objectives:
            reason = f"unknown objective {value!r}; rm.objectives is [{', '.join(objectives)}] (set rm.objectives to name every head the data labels)"
        elif fixed is not None and value != fixed:
            reason = f"names objective {value!r} but this file is rm.objective_data for {fixed!r}"
        if reason is None:
            labels[source.line] = objectives.index(value)
            continue
        error = DataError(path, source.line, "objective", reason)
        if on_error == "raise":
            raise error
        errors.append(error)
    if not seen_field:
        return ({line: objectives.index(fixed) for line in labels} if fixed is not None else None), []
    if fixed is None:
        unlabelled = [source.line for source, row in rows if row.get("objective") is None]
        for line in unlabelled:
            error = DataError(path, line, "objective", f"missing: other rows of this file name an objective, so every row must (one of {', '.join(objectives)})")
            if on_error == "raise":
                raise error
            errors.append(error)
    return labels, errors


def _tag_objectives(examples: list[Example], labels: dict[int, int] | None, default: int) -> list[Example]:
    """Set ``extra["objective"]`` from the row's label (by its source line); drop rows without one."""
    kept = []
    for example in examples:
        line = int(example.extra["source"].rsplit(":", 1)[1])
        index = default if labels is None else labels.get(line)
        if index is not None:
            example.extra["objective"] = index
            kept.append(example)
    return kept


def prepare_reward_data(tokenizer, cfg: RMConfig):
    """Train and eval Examples for every objective, each tagged with ``extra["objective"]``.

    Per-objective labels come either from one file whose rows carry an ``objective`` field, or
    from one file per objective (``rm.objective_data``, in the order of ``rm.objectives``).
    """
    from tether.trainers.prepare import PreparedData, prepare_data

    objectives = cfg.rm.objectives
    if cfg.rm.objective_data:
        paths, fixed = cfg.rm.objective_data, list(objectives)
        if len(paths) != len(objectives):
            raise ValueError(f"rm.objectives names {len(objectives)} heads but rm.objective_data gives {len(paths)} files; give one file per objective")
    else:
        paths, fixed = [cfg.data.path], [None]
    eval_paths = cfg.rm.objective_eval_data or [cfg.data.eval_path] * len(paths)
    merged = PreparedData([], [], [])
    for path, eval_path, name in zip(paths, eval_paths, fixed):
        kinds = {p: _data_kind(p) for p in (path, eval_path) if p}
        for p, kind in kinds.items():  # pairs and rankings mix freely: a pair is a ranking of two
            if kind not in ("preference", "ranking"):
                raise ValueError(f"{p}: reward models train and evaluate on preference pairs or rankings, not {kind} records")
        labels, errors = objective_labels(path, objectives, name, cfg.data.on_error, cfg.data.split)
        if labels is None and len(objectives) > 1:
            raise ValueError(
                f"{path}: rm.objectives names {len(objectives)} heads ({', '.join(objectives)}) but no row has an 'objective' field; "
                "label each row with the head it is about, or give one file per head in rm.objective_data"
            )
        eval_labels = labels
        if eval_path:
            eval_labels, eval_errors = objective_labels(eval_path, objectives, name, cfg.data.on_error, cfg.data.split)
            errors += eval_errors
        data = prepare_data(tokenizer, replace(cfg.data, path=path, eval_path=eval_path), kinds[path], cfg.train.seed, kinds.get(eval_path))
        tag = f"[{name}] " if name else ""
        merged.train += _tag_objectives(data.train, labels, 0)
        merged.eval += _tag_objectives(data.eval, eval_labels, 0)
        merged.report += [f"{tag}{line}" for line in data.report]
        if errors:
            merged.report.append(f"{tag}skipped {len(errors)} rows with a bad 'objective' field (data.on_error=skip):")
            merged.report += [f"  {err}" for err in errors[:10]]
    counts = [sum(e.extra["objective"] == i for e in merged.train) for i in range(len(objectives))]
    if len(objectives) > 1:
        merged.report.append("train examples per objective: " + ", ".join(f"{n} {c}" for n, c in zip(objectives, counts)))
    return merged


def bootstrap_sample(examples: list[Example], seed: int) -> list[Example]:
    """N draws with replacement: each member sees about 63% of the distinct examples."""
    rng = random.Random(seed)
    return [examples[rng.randrange(len(examples))] for _ in examples]


# ---------------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------------


def _weights(cfg: RMConfig) -> dict[str, float] | None:
    if not cfg.rm.weights:
        return None
    if len(cfg.rm.weights) != len(cfg.rm.objectives):
        raise ValueError(f"rm.weights has {len(cfg.rm.weights)} values for {len(cfg.rm.objectives)} objectives")
    return dict(zip(cfg.rm.objectives, cfg.rm.weights))


def run_rm_train(cfg: RMConfig):
    """Train a reward model (or ensemble) and save it to ``<output_dir>/model``; returns the FitResults."""
    from tether.models.reward import RewardModel
    from tether.models.reward_ensemble import RewardEnsemble
    from tether.parallel import device, is_main, world
    from tether.trainers.common import load_trainable_model
    from tether.trainers.distributed import save_final_model
    from tether.trainers.offline import fit

    out = Path(cfg.train.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_yaml(cfg, out / "config.yaml")
    size = cfg.rm.ensemble_size
    if size < 1:
        raise ValueError("rm.ensemble_size must be at least 1")
    lora_for_single = cfg.lora if size == 1 else replace(cfg.lora, enabled=False)  # an ensemble adds its own adapters
    backbone, tokenizer = load_trainable_model(cfg.model, lora_for_single, cfg.train.seed)
    if cfg.rm.layers:
        from tether.models.forward import keep_first_layers

        keep_first_layers(backbone, cfg.rm.layers)
        print(f"reward model backbone: the first {cfg.rm.layers} decoder layers (rm.layers)")
    data = prepare_reward_data(tokenizer, cfg)
    for line in data.report:
        print(line)
    loss_kind = resolve_loss(cfg.rm.loss, data.train)
    layout = resolve_layout(cfg.rm.share_prompt, cfg.data.pack)
    objective = RewardObjective(loss_kind, tokenizer.pad_token_id, cfg.rm.use_margin, cfg.rm.centering_coef, layout, cfg.data.max_length)
    print(f"reward loss: {loss_kind.value}; objectives: {', '.join(cfg.rm.objectives)}; layout: {layout.value}")

    if size == 1:
        import torch

        torch.manual_seed(cfg.train.seed)
        model = RewardModel(backbone, tokenizer, cfg.rm.objectives, _weights(cfg), cfg.data.max_length, pooling=cfg.rm.pooling).to(device())
        results = [fit(model, objective, data.train, data.eval, cfg.train, title="rm", report=data.report)]
        trained = results[0].model  # whole (None on the other processes of a sharded run)
    else:
        from tether.models.lora import lora_arguments

        if cfg.train.distributed == "fsdp" and world().distributed:
            raise ValueError("rm.ensemble_size > 1 with train.distributed=fsdp: the members share one backbone, which FSDP cannot shard per member; use train.distributed=ddp")

        lora = lora_arguments(cfg.lora) if cfg.lora.enabled else None
        trained = RewardEnsemble.create(backbone, tokenizer, size, cfg.rm.objectives, _weights(cfg), cfg.data.max_length, lora, cfg.train.seed, cfg.rm.penalty, cfg.rm.pooling).to(device())
        results = []
        if cfg.train.max_minutes is not None:
            print(f"train.max_minutes={cfg.train.max_minutes}: {cfg.train.max_minutes / size:g} minutes for each of the {size} members")
        for k in range(size):
            member = trained.trainable_member(k)
            member_train = bootstrap_sample(data.train, cfg.train.seed + 1000 * (k + 1)) if cfg.rm.bootstrap else data.train
            # train.max_minutes is the whole ensemble's budget: each member gets its share
            member_cfg = replace(cfg.train, output_dir=str(out / f"member-{k}"), seed=cfg.train.seed + k, max_minutes=None if cfg.train.max_minutes is None else cfg.train.max_minutes / size)
            results.append(fit(member, objective, member_train, data.eval, member_cfg, title=f"rm member {k + 1}/{size}", report=data.report))
        trained.requires_grad_(False)
    save_final_model(lambda path: trained.save_pretrained(path), out / "model")
    print(f"saved reward model to {out / 'model'}")
    if data.eval and is_main():
        from tether.evaluate.reward_model import evaluate_examples, print_report

        report = evaluate_examples(trained, data.eval, cfg.train.micro_batch_size)
        print_report(report, "held-out evaluation")
        (out / "eval.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    return results


__all__ = [
    "REWARD_LOSSES",
    "RMConfig",
    "RewardLoss",
    "RewardObjective",
    "RewardSection",
    "bootstrap_sample",
    "objective_labels",
    "prepare_reward_data",
    "resolve_loss",
    "run_rm_train",
]
