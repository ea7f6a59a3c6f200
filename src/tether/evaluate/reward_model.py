"""Evaluation and scoring of saved reward models: ``tether rm eval`` and ``tether rm score``.

``score_sequences`` runs a model or an ensemble over tokenized sequences (each member through
``RewardModel.score_sequences``); ``evaluate_examples`` turns the scores of every (better,
worse) pair of pairs and rankings into the ``tether.evaluate.reward_metrics`` report. The
trainer (``tether.trainers.rm``) calls ``evaluate_examples`` on its held-out split at the end.
"""

from __future__ import annotations

import json
from pathlib import Path

from tether.config import DataConfig
from tether.trainers.offline import Example


def score_sequences(model, sequences: list[tuple[list[int], int]], batch_size: int, objective: list[int | None] | None = None):
    """(reward [S], spread [S] or None) for tokenized sequences, with a model or an ensemble.

    ``objective[s]``: the head that scores sequence s, or None for the objectives combined with
    the model's default weights (also what ``objective=None`` means for every sequence).
    Each member scores through ``RewardModel.score_sequences``, the one scoring loop."""
    import torch

    from tether.models.reward_ensemble import RewardEnsemble, mean_and_spread

    members = list(model.members) if isinstance(model, RewardEnsemble) else [model]
    outs = []
    for member in members:
        rewards = member.score_sequences(sequences, batch_size)  # [S, O]
        combined = member.combine(rewards)  # [S]
        if objective is None:
            outs.append(combined)
        else:
            head = torch.tensor([-1 if o is None else o for o in objective])  # [S]
            picked = rewards[torch.arange(len(sequences)), head.clamp(min=0)]  # [S]
            outs.append(torch.where(head >= 0, picked, combined))
    mean, spread = mean_and_spread(torch.stack(outs))
    return mean, (spread if len(members) > 1 else None)


def evaluate_examples(model, examples: list[Example], batch_size: int = 16) -> dict[str, float]:
    """The reward_metrics report over every (better, worse) pair of pairs and rankings.

    An example tagged ``extra["objective"]`` is scored by that head alone (and the report adds
    ``accuracy/<objective>`` when there are several); untagged ones by the combined reward."""
    import torch

    from tether.evaluate.reward_metrics import reward_model_report
    from tether.losses.reward import pairwise_accuracy, ranking_pairs

    sequences = [seq for e in examples for seq in e.sequences]
    per_sequence_objective = [e.extra.get("objective") for e in examples for _ in e.sequences]
    reward, spread = score_sequences(model, sequences, batch_size, per_sequence_objective)
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
                report[f"accuracy/{name}"] = float(pairwise_accuracy(r_better[pair_head == i].double(), r_worse[pair_head == i].double()))
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
    from tether.trainers.rm import _data_kind, _tag_objectives, objective_labels

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


__all__ = ["evaluate_examples", "load_reward_model", "print_report", "run_rm_eval", "run_rm_score", "score_sequences"]
