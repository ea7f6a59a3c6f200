"""Reward-model training, evaluation and scoring: ``tether rm train | eval | score``.

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
from typing import Literal

from tether.config import DataConfig, LoRAConfig, ModelConfig, TrainConfig, opt, save_yaml
from tether.data.layouts import Layout, collate_layout, resolve_layout
from tether.trainers.offline import Example


@dataclass
class RewardSection:
    objectives: list[str] = opt(["reward"], "Names of the reward heads, e.g. [helpful, harmless, honest]. One output per name.")
    objective_data: list[str] = opt([], "Training data per objective, in the order of rm.objectives. Empty: data.path, whose rows name their head in an 'objective' field when there are several.")
    objective_eval_data: list[str] = opt([], "Evaluation data per objective (optional; else data.eval_fraction of each file is held out).")
    weights: list[float] = opt([], "Default weight of each objective when scores are combined (empty: equal weights). Callers may pass other weights at scoring time.")
    loss: Literal["auto", "bradley_terry", "plackett_luce"] = opt("auto", "auto: Bradley-Terry when every example is a pair, Plackett-Luce over whole rankings otherwise.")
    use_margin: bool = opt(True, "Use a pair's 'margin' field as the required reward gap in Bradley-Terry (pairs without one get 0).")
    share_prompt: bool = opt(True, "Run each pair's or ranking's prompt through the model once, its completions branching off it (exact: same rewards as separate sequences, fewer tokens, no padding). false: data.pack decides between padded and packed rows.")
    centering_coef: float = opt(0.01, "Weight of the centring term (sum of an example's rewards)^2 that keeps rewards near zero.")
    ensemble_size: int = opt(1, "Members of a reward ensemble (1: a single reward model). With LoRA the members share one frozen backbone.")
    bootstrap: bool = opt(True, "Train each ensemble member on a bootstrap resample (with replacement) of the training data.")
    penalty: float = opt(1.0, "lambda of the uncertainty-penalised reward mean - lambda * std, stored with an ensemble.")
    pooling: Literal["last", "mean"] = opt("last", "What the head reads: the final hidden state at the response's last token, or the mean over the response's tokens.")


@dataclass
class RMConfig:
    """Reward-model training from preference pairs or rankings."""

    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(path="bundled:preferences", eval_fraction=0.1))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(output_dir="runs/rm", lr=1e-5, batch_size=8, micro_batch_size=8, sample_prompts=[]))
    rm: RewardSection = field(default_factory=RewardSection)


class RewardLoss(enum.Enum):
    BRADLEY_TERRY = "bradley_terry"
    PLACKETT_LUCE = "plackett_luce"


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

        batch = collate_layout(self.layout, [e.sequences for e in examples], self.pad_id, self.row_tokens)
        rewards = model(batch)  # [S, O], S = sum of the examples' slot counts
        sizes = [len(e.sequences) for e in examples]
        n, k = len(examples), max(sizes)
        # Slot j of example i sits at flat sequence offset[i] + j (collate is example-major).
        offsets = torch.tensor([0, *sizes[:-1]]).cumsum(0)  # [N]
        slot = torch.arange(k)  # [K]
        mask = slot.unsqueeze(0) < torch.tensor(sizes).unsqueeze(1)  # [N, K]
        flat = (offsets.unsqueeze(1) + slot.unsqueeze(0)).clamp(max=rewards.shape[0] - 1)  # [N, K]
        objective = torch.tensor([int(e.extra.get("objective", 0)) for e in examples])  # [N]
        scores = rewards[flat, objective.unsqueeze(1).expand(n, k)]  # [N, K], this example's head
        scores = torch.where(mask, scores, torch.zeros((), dtype=scores.dtype))
        margins = None
        if self.use_margin and any("margin" in e.extra for e in examples):
            margins = torch.tensor([float(e.extra.get("margin", 0.0)) for e in examples], dtype=scores.dtype)  # [N]
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
    from tether.trainers.common import load_trainable_model
    from tether.trainers.offline import fit

    out = Path(cfg.train.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_yaml(cfg, out / "config.yaml")
    size = cfg.rm.ensemble_size
    if size < 1:
        raise ValueError("rm.ensemble_size must be at least 1")
    lora_for_single = cfg.lora if size == 1 else replace(cfg.lora, enabled=False)  # an ensemble adds its own adapters
    backbone, tokenizer = load_trainable_model(cfg.model, lora_for_single, cfg.train.seed)
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
        model = RewardModel(backbone, tokenizer, cfg.rm.objectives, _weights(cfg), cfg.data.max_length, pooling=cfg.rm.pooling)
        results = [fit(model, objective, data.train, data.eval, cfg.train, title="rm")]
        trained = model
    else:
        lora = None
        if cfg.lora.enabled:
            targets = cfg.lora.target_modules if cfg.lora.target_modules == "all-linear" else [t.strip() for t in cfg.lora.target_modules.split(",")]
            lora = {"r": cfg.lora.r, "alpha": cfg.lora.alpha, "dropout": cfg.lora.dropout, "target_modules": targets}
        trained = RewardEnsemble.create(backbone, tokenizer, size, cfg.rm.objectives, _weights(cfg), cfg.data.max_length, lora, cfg.train.seed, cfg.rm.penalty, cfg.rm.pooling)
        results = []
        for k in range(size):
            member = trained.trainable_member(k)
            member_train = bootstrap_sample(data.train, cfg.train.seed + 1000 * (k + 1)) if cfg.rm.bootstrap else data.train
            member_cfg = replace(cfg.train, output_dir=str(out / f"member-{k}"), seed=cfg.train.seed + k)
            results.append(fit(member, objective, member_train, data.eval, member_cfg, title=f"rm member {k + 1}/{size}"))
        trained.requires_grad_(False)
    trained.save_pretrained(out / "model")
    print(f"saved reward model to {out / 'model'}")
    if data.eval:
        report = evaluate_examples(trained, data.eval, cfg.train.micro_batch_size)
        print_report(report, "held-out evaluation")
        (out / "eval.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    return results


# ---------------------------------------------------------------------------------------------
# Evaluation and scoring
# ---------------------------------------------------------------------------------------------


def _score_sequences(model, sequences: list[tuple[list[int], int]], batch_size: int, objective: list[int | None] | None = None):
    """(reward [S], spread [S] or None) for tokenized sequences, with a model or an ensemble.

    ``objective[s]``: the head that scores sequence s, or None for the objectives combined with
    the model's default weights (also what ``objective=None`` means for every sequence)."""
    import torch

    from tether.data.batches import collate
    from tether.models.reward_ensemble import RewardEnsemble, mean_and_spread

    members = list(model.members) if isinstance(model, RewardEnsemble) else [model]
    pad_id = members[0].tokenizer.pad_token_id
    outs = []
    with torch.no_grad():
        for member in members:
            was_training = member.training
            member.eval()
            rewards = torch.zeros(len(sequences), len(member.objectives))
            order = sorted(range(len(sequences)), key=lambda i: len(sequences[i][0]))
            for start in range(0, len(order), batch_size):
                chunk = order[start : start + batch_size]
                rewards[chunk] = member(collate([[sequences[i]] for i in chunk], pad_id)).float()
            combined = member.combine(rewards)  # [S]
            if objective is None:
                outs.append(combined)
            else:
                head = torch.tensor([-1 if o is None else o for o in objective])  # [S]
                picked = rewards[torch.arange(len(sequences)), head.clamp(min=0)]  # [S]
                outs.append(torch.where(head >= 0, picked, combined))
            member.train(was_training)
    mean, spread = mean_and_spread(torch.stack(outs))
    return mean, (spread if len(members) > 1 else None)


def evaluate_examples(model, examples: list[Example], batch_size: int = 16) -> dict[str, float]:
    """The reward_metrics report over every (better, worse) pair of pairs and rankings.

    An example tagged ``extra["objective"]`` is scored by that head alone (and the report adds
    ``accuracy/<objective>`` when there are several); untagged ones by the combined reward."""
    import torch

    from tether.evaluate.reward_metrics import pairwise_accuracy, ranking_pairs, reward_model_report

    sequences = [seq for e in examples for seq in e.sequences]
    per_sequence_objective = [e.extra.get("objective") for e in examples for _ in e.sequences]
    reward, spread = _score_sequences(model, sequences, batch_size, per_sequence_objective)
    lengths = torch.tensor([float(len(ids) - plen) for ids, plen in sequences])  # completion tokens
    k = max(len(e.sequences) for e in examples)
    index = torch.zeros(len(examples), k, dtype=torch.long)
    mask = torch.zeros(len(examples), k, dtype=torch.bool)
    at = 0
    for i, e in enumerate(examples):
        index[i, : len(e.sequences)] = torch.arange(at, at + len(e.sequences))
        mask[i, : len(e.sequences)] = True
        at += len(e.sequences)
    r_better, r_worse = ranking_pairs(reward[index], mask)
    l_better, l_worse = ranking_pairs(lengths[index], mask)
    s_better, s_worse = ranking_pairs(spread[index], mask) if spread is not None else (None, None)
    report = reward_model_report(r_better, r_worse, l_better, l_worse, s_better, s_worse)
    heads = torch.tensor([-1 if e.extra.get("objective") is None else int(e.extra["objective"]) for e in examples])  # [N]
    if len(set(heads.tolist()) - {-1}) > 1:
        pair_head, _ = ranking_pairs(heads.unsqueeze(1).expand(-1, k).clone(), mask)  # [P], the head of each pair's example
        names = (model.members[0] if hasattr(model, "members") else model).objectives
        for i, name in enumerate(names):
            if (pair_head == i).any():
                report[f"accuracy/{name}"] = pairwise_accuracy(r_better[pair_head == i], r_worse[pair_head == i])
    return report


def print_report(report: dict[str, float], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_header=False)
    for key, value in report.items():
        table.add_row(key, f"{value:.4g}")
    Console().print(table)


def run_rm_eval(model_dir: str, data_path: str = "bundled:preferences", max_length: int | None = None, batch_size: int = 16, output: str | None = None) -> dict[str, float]:
    """Held-out accuracy, ECE, reward distribution and the length-only baseline of a saved reward model."""
    from tether.data import load_records
    from tether.models.reward_ensemble import load_reward
    from tether.trainers.prepare import _encode

    model = load_reward(model_dir)
    first = model.members[0] if hasattr(model, "members") else model
    kind = _data_kind(data_path)
    if kind not in ("preference", "ranking"):
        raise ValueError(f"{data_path}: rm eval needs preference pairs or rankings, not {kind} records")
    records = load_records(data_path, kind=kind).records
    data_cfg = DataConfig(path=data_path, max_length=max_length or first.max_length)
    examples = _encode(first.tokenizer, records, data_cfg, "eval", [])
    labels, _ = objective_labels(data_path, first.objectives)  # rows naming a head are scored by it
    if labels is not None:
        examples = _tag_objectives(examples, labels, 0)
    report = evaluate_examples(model, examples, batch_size)
    print_report(report, f"reward model {model_dir} on {data_path}")
    if output:
        Path(output).write_text(json.dumps(report, indent=2), encoding="utf-8")
    return report


def run_rm_score(model_dir: str, input_path: str, output_path: str, weights: dict[str, float] | None = None, penalty: float | None = None, batch_size: int = 16) -> int:
    """Score every (prompt, completion) in a file; writes JSONL rows with ``reward``. Pairs get
    ``reward_chosen``/``reward_rejected``, rankings ``rewards``. An ensemble's ``reward`` is the
    penalised mean − λ·spread, with ``mean`` and ``spread`` beside it; a model with several heads
    adds ``objectives``: each head's reward (in the same layout) before weighting."""
    from tether.data import load_records
    from tether.models.reward_ensemble import RewardEnsemble, penalized

    model = load_reward_model(model_dir)
    records = load_records(input_path, kind="auto").records
    prompts, responses, owner = [], [], []
    for i, record in enumerate(records):
        texts = [record.completion] if hasattr(record, "completion") else ([record.chosen, record.rejected] if hasattr(record, "chosen") else list(record.completions))
        for text in texts:
            prompts.append(record.prompt)
            responses.append(text)
            owner.append(i)
    extra: dict = {}  # name -> [S] values written beside the reward
    if isinstance(model, RewardEnsemble):
        mean, spread = model.score(prompts, responses, batch_size, weights)
        reward = penalized(mean, spread, model.penalty if penalty is None else penalty)
        extra = {"mean": mean, "spread": spread}
    else:
        per_head = model.score_all(prompts, responses, batch_size)  # [S, O]
        reward = model.combine(per_head, weights)  # [S]
        if len(model.objectives) > 1:
            extra = {f"objectives.{name}": per_head[:, o] for o, name in enumerate(model.objectives)}
    slots: list[list[int]] = [[] for _ in records]  # flat indices of each record's completions
    for j, i in enumerate(owner):
        slots[i].append(j)
    rows: list[dict] = []
    for record, idx in zip(records, slots):
        row: dict = {"prompt": record.prompt}
        if hasattr(record, "completion"):
            row.update(completion=record.completion, reward=float(reward[idx[0]]))
        elif hasattr(record, "chosen"):
            row.update(chosen=record.chosen, rejected=record.rejected, reward_chosen=float(reward[idx[0]]), reward_rejected=float(reward[idx[1]]))
        else:
            row.update(completions=record.completions, rewards=[float(reward[j]) for j in idx])
        for name, value in extra.items():  # a scalar for one completion, else a list in completion order
            parent, _, child = name.partition(".")
            entry = float(value[idx[0]]) if len(idx) == 1 else [float(value[j]) for j in idx]
            if child:
                row.setdefault(parent, {})[child] = entry
            else:
                row[parent] = entry
        rows.append(row)
    Path(output_path).parent.mkdir(parents=True, exist_ok=True)
    with open(output_path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    print(f"scored {len(responses)} responses from {len(records)} records -> {output_path}")
    return len(responses)


def load_reward_model(model_dir: str):
    from tether.models.reward_ensemble import load_reward

    return load_reward(model_dir)


# ---------------------------------------------------------------------------------------------
# CLI: `tether rm train | eval | score`
# ---------------------------------------------------------------------------------------------


def _parse_weights(text: str | None) -> dict[str, float] | None:
    if not text:
        return None
    out = {}
    for item in text.split(","):
        name, _, value = item.partition("=")
        if not value:
            raise ValueError(f"--weights expects name=value pairs separated by commas, got {item!r}")
        out[name.strip()] = float(value)
    return out


def _eval_command(args) -> int:
    run_rm_eval(args.model, args.data, args.max_length, args.batch_size, args.output)
    return 0


def _score_command(args) -> int:
    run_rm_score(args.model, args.input, args.output, _parse_weights(args.weights), args.penalty, args.batch_size)
    return 0


def add_rm_commands(sub, add_training_parser, training_command_cls) -> None:
    """Register ``tether rm`` with its ``train``, ``eval`` and ``score`` actions (called by tether.cli)."""
    rm = sub.add_parser("rm", help="Reward models: train, evaluate, score.", description="Reward models: train, evaluate, score.")
    actions = rm.add_subparsers(dest="rm_command", metavar="<action>", required=True)
    add_training_parser(
        actions,
        "train",
        training_command_cls(
            "tether.trainers.rm:RMConfig",
            "tether.trainers.rm:run_rm_train",
            "Train a reward model (or an ensemble) on preference pairs or rankings.",
            {"--ensemble-size": "rm.ensemble_size"},
        ),
    )
    e = actions.add_parser("eval", help="Held-out accuracy, calibration (ECE), reward distribution and the length-only baseline.")
    e.add_argument("--model", required=True, help="a directory written by `tether rm train` (<output>/model)")
    e.add_argument("--data", default="bundled:preferences", help="preference pairs or rankings")
    e.add_argument("--max-length", type=int, default=None, help="tokens per sequence (default: the model's)")
    e.add_argument("--batch-size", type=int, default=16)
    e.add_argument("--output", default=None, help="also write the metrics as JSON here")
    e.set_defaults(_handler=_eval_command)
    s = actions.add_parser("score", help="Score the completions of a data file; writes JSONL with rewards.")
    s.add_argument("--model", required=True, help="a directory written by `tether rm train` (<output>/model)")
    s.add_argument("--input", required=True, help="demonstrations (prompt, completion), pairs or rankings")
    s.add_argument("--output", required=True, help="JSONL file to write")
    s.add_argument("--weights", default=None, help="objective weights, e.g. helpful=1,harmless=0.5 (default: the model's)")
    s.add_argument("--penalty", type=float, default=None, help="ensembles: lambda in mean - lambda * std (default: the one saved)")
    s.add_argument("--batch-size", type=int, default=16)
    s.set_defaults(_handler=_score_command)


__all__ = [
    "REWARD_LOSSES",
    "RMConfig",
    "RewardLoss",
    "RewardObjective",
    "RewardSection",
    "add_rm_commands",
    "bootstrap_sample",
    "evaluate_examples",
    "prepare_reward_data",
    "resolve_loss",
    "run_rm_eval",
    "run_rm_score",
    "run_rm_train",
]
