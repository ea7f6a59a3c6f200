"""Pairwise preference-model training and evaluation: ``tether pm train | eval``.

The data are those of ``tether rm train``: preference pairs (``prompt``, ``chosen``, ``rejected``)
and rankings (``prompt``, ``completions`` best first), mixed freely. A ranking of K expands into
its K·(K−1)/2 ordered pairs (i before j: i won). Each pair becomes one example of two sequences,
(x, chosen, rejected) and (x, rejected, chosen); the model's two scores give the logit
d = s(x, c, r) − s(x, r, c) and the loss is ``tether.losses.pairwise.pairwise_preference_loss``
with label 1 (a pair's ``margin`` does not apply and is reported when present). Both sequences
share the prompt, so by default they run as one shared-prefix segment (``pm.share_prompt``).

Training runs the shared offline loop (``tether.trainers.offline.fit``): checkpoints, exact
resume, logging. The held-out report is ``tether.evaluate.reward_metrics.reward_model_report`` on
(s(x,c,r), s(x,r,c)) per pair, so its ``accuracy`` is the fraction with P(c ≻ r) > 1/2 and its
``ece`` the calibration of P(c ≻ r) itself.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from tether.config import (
    DataConfig,
    LoRAConfig,
    ModelConfig,
    TrainConfig,
    opt,
    save_yaml,
)
from tether.data.layouts import Layout, collate_layout, resolve_layout
from tether.trainers.offline import Example


@dataclass
class PreferenceSection:
    share_prompt: bool = opt(True, "Run each pair's prompt once, the two orders (x,a,b) and (x,b,a) branching off it (exact). false: data.pack decides between padded and packed rows.")


@dataclass
class PMConfig:
    """Pairwise preference-model training from preference pairs or rankings."""

    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(path="bundled:preferences", eval_fraction=0.1))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(output_dir="runs/pm", lr=1e-5, batch_size=8, micro_batch_size=8, sample_prompts=[]))
    pm: PreferenceSection = field(default_factory=PreferenceSection)


def ordered_pairs(record) -> list[tuple[str, str]]:
    """(winner, loser) texts of a pair, or of every i-before-j pair of a ranking (best first)."""
    if hasattr(record, "chosen"):
        return [(record.chosen, record.rejected)]
    c = list(record.completions)
    return [(c[i], c[j]) for i in range(len(c)) for j in range(i + 1, len(c))]


def encode_pm_examples(tokenizer, records, max_length: int, truncation: str, what: str, report: list[str]) -> list[Example]:
    """One Example of two sequences [(x,w,l), (x,l,w)] per ordered pair of every record."""
    from tether.models.preference import encode_ordered_pair

    examples, dropped, with_margin = [], 0, 0
    for record in records:
        with_margin += getattr(record, "margin", None) is not None
        for winner, loser in ordered_pairs(record):
            both = encode_ordered_pair(tokenizer, record.prompt, winner, loser, max_length, truncation)
            if both is None:
                dropped += 1
                continue
            source = f"{record.source.path}:{record.source.line}"
            examples.append(Example([(e.input_ids, e.prompt_len) for e in both], {"label": 1.0, "source": source}))
    report.append(f"{what}: {len(examples)} ordered pairs from {len(records)} records ({dropped} dropped by data.truncation)")
    if with_margin:
        report.append(f"{what}: {with_margin} rows carry a 'margin'; a preference model does not use it (the label is who won)")
    return examples


def prepare_pm_data(tokenizer, cfg: PMConfig) -> tuple[list[Example], list[Example], list[str]]:
    from tether.trainers.prepare import load_and_split
    from tether.trainers.rm import _data_kind

    kinds = {p: _data_kind(p) for p in (cfg.data.path, cfg.data.eval_path) if p}
    for p, kind in kinds.items():
        if kind not in ("preference", "ranking"):
            raise ValueError(f"{p}: a preference model trains and evaluates on preference pairs or rankings, not {kind} records")
    records, eval_records, report = load_and_split(cfg.data, kinds[cfg.data.path], cfg.train.seed, kinds.get(cfg.data.eval_path))
    train = encode_pm_examples(tokenizer, records, cfg.data.max_length, cfg.data.truncation, "train", report)
    held = encode_pm_examples(tokenizer, eval_records, cfg.data.max_length, cfg.data.truncation, "eval", report) if eval_records else []
    if not train:
        raise ValueError(f"{cfg.data.path}: no training pairs left (see data.truncation / data.max_length)")
    return train, held, report


@dataclass
class PreferenceObjective:
    """Summed pairwise BCE per micro-batch; the loop averages over pairs."""

    pad_id: int
    layout: Layout = Layout.SHARED_PROMPT
    row_tokens: int = 512

    def units(self, examples: list[Example]) -> float:
        return float(len(examples))

    def loss(self, model, examples: list[Example]):
        import torch

        from tether.losses.pairwise import pairwise_preference_loss

        batch = collate_layout(self.layout, [e.sequences for e in examples], self.pad_id, self.row_tokens)
        scores = model(batch)[:, 0].view(-1, 2)  # [N, 2]: s(x,a,b), s(x,b,a)
        labels = torch.tensor([float(e.extra.get("label", 1.0)) for e in examples], dtype=scores.dtype)  # [N]
        losses, metrics = pairwise_preference_loss(scores[:, 0], scores[:, 1], labels)  # [N]
        n = len(examples)
        return losses.sum(), {name: value.detach() * n for name, value in metrics.items()}


def pm_scores(model, examples: list[Example], batch_size: int = 16):
    """(s(x,a,b) [N], s(x,b,a) [N]) of each example's two sequences, in eval mode, no gradient."""
    import torch

    from tether.data.batches import collate

    was_training = model.training
    model.eval()
    out = torch.zeros(len(examples), 2)
    order = sorted(range(len(examples)), key=lambda i: examples[i].num_tokens)
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            batch = collate([examples[i].sequences for i in chunk], model.tokenizer.pad_token_id)
            out[chunk] = model(batch)[:, 0].float().view(-1, 2).cpu()
    model.train(was_training)
    return out[:, 0], out[:, 1]


def evaluate_pm(model, examples: list[Example], batch_size: int = 16) -> dict[str, float]:
    """Held-out accuracy and calibration of P(winner ≻ loser) = σ(s_wl − s_lw), the reward_metrics report."""
    import torch

    from tether.evaluate.reward_metrics import reward_model_report

    s_wl, s_lw = pm_scores(model, examples, batch_size)
    # Completion tokens of each order are the same two replies; their lengths for the length rule
    # are read from the pair text as the model sees it (winner first in sequence 0).
    lengths = torch.tensor([float(len(e.sequences[0][0]) - e.sequences[0][1]) for e in examples])
    report = reward_model_report(s_wl, s_lw, lengths, lengths)
    report.pop("length_baseline_accuracy")  # both sequences hold both replies: no length rule to compare with
    report["prob_mean"] = float(torch.sigmoid(s_wl - s_lw).mean())
    return report


def run_pm_train(cfg: PMConfig):
    """Train a preference model, save it to ``<output_dir>/model``, report held-out accuracy and ECE."""
    import torch

    from tether.evaluate.reward_model import print_report
    from tether.models.preference import PreferenceModel
    from tether.trainers.common import load_trainable_model
    from tether.trainers.offline import fit

    out = Path(cfg.train.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_yaml(cfg, out / "config.yaml")
    backbone, tokenizer = load_trainable_model(cfg.model, cfg.lora, cfg.train.seed)
    train, held, report = prepare_pm_data(tokenizer, cfg)
    for line in report:
        print(line)
    layout = resolve_layout(cfg.pm.share_prompt, cfg.data.pack)
    objective = PreferenceObjective(tokenizer.pad_token_id, layout, cfg.data.max_length)
    torch.manual_seed(cfg.train.seed)
    model = PreferenceModel(backbone, tokenizer, max_length=cfg.data.max_length)
    result = fit(model, objective, train, held, cfg.train, title="pm", report=report)
    model.save_pretrained(out / "model")
    print(f"saved preference model to {out / 'model'}")
    if held:
        report = evaluate_pm(model, held, cfg.train.micro_batch_size)
        print_report(report, "held-out evaluation")
        (out / "eval.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    return result


def run_pm_eval(model_dir: str, data_path: str = "bundled:preferences", batch_size: int = 16, output: str | None = None) -> dict[str, float]:
    """Accuracy and calibration of a saved preference model on pairs or rankings."""
    from tether.data import load_records
    from tether.evaluate.reward_model import print_report
    from tether.models.preference import PreferenceModel
    from tether.trainers.rm import _data_kind

    model = PreferenceModel.from_pretrained(model_dir)
    kind = _data_kind(data_path)
    if kind not in ("preference", "ranking"):
        raise ValueError(f"{data_path}: pm eval needs preference pairs or rankings, not {kind} records")
    records = load_records(data_path, kind=kind).records
    examples = encode_pm_examples(model.tokenizer, records, model.max_length, "truncate_prompt", "eval", [])
    report = evaluate_pm(model, examples, batch_size)
    print_report(report, f"preference model {model_dir} on {data_path}")
    if output:
        Path(output).write_text(json.dumps(report, indent=2), encoding="utf-8")
    return report


__all__ = ["PMConfig", "PreferenceObjective", "PreferenceSection", "encode_pm_examples", "evaluate_pm", "ordered_pairs", "prepare_pm_data", "run_pm_eval", "run_pm_train"]
