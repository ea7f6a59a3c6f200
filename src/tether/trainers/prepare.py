"""From a DataConfig to tokenized training and evaluation examples, with every drop reported."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from tether.config import DataConfig
from tether.trainers.offline import Example


@dataclass
class PreparedData:
    train: list[Example]
    eval: list[Example]
    report: list[str] = field(default_factory=list)  # human-readable lines: counts, skips, truncations


def _to_example(item) -> Example:
    """One encoded record (see tether.data.encode.encode_records) -> an Example."""
    from tether.data.encode import Encoded

    if isinstance(item, Encoded):  # demonstration
        return Example([(item.input_ids, item.prompt_len)])
    if isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], bool):  # unpaired (encoded, label)
        enc, label = item
        return Example([(enc.input_ids, enc.prompt_len)], {"label": label})
    if isinstance(item, tuple) and len(item) == 2:  # pair (chosen, rejected)
        chosen, rejected = item
        return Example([(chosen.input_ids, chosen.prompt_len), (rejected.input_ids, rejected.prompt_len)])
    return Example([(e.input_ids, e.prompt_len) for e in item])  # ranking, best first


def _encode(tokenizer, records, cfg: DataConfig, what: str, report: list[str]) -> list[Example]:
    from tether.data.encode import encode_records

    items, stats = encode_records(tokenizer, records, cfg.max_length, cfg.truncation)
    examples = []
    for record, item in zip(stats.kept_records, items):
        example = _to_example(item)
        margin = getattr(record, "margin", None)
        if margin is not None:
            example.extra["margin"] = float(margin)
        scores = getattr(record, "scores", None)
        if scores is not None:
            example.extra["scores"] = list(scores)
        example.extra["source"] = f"{record.source.path}:{record.source.line}"
        examples.append(example)
    report.append(f"{what}: {len(examples)} examples ({stats.describe()})")
    return examples


def load_and_split(cfg: DataConfig, kind: str, seed: int, eval_kind: str | None = None) -> tuple[list, list, list[str]]:
    """(train records, eval records, report lines): load and validate ``cfg.path`` (and
    ``cfg.eval_path``), or hold out a seeded ``cfg.eval_fraction`` of ``cfg.path``."""
    from tether.data import load_records
    from tether.data.rankings import resolve_ties

    report: list[str] = []
    loaded = load_records(cfg.path, kind=kind, on_error=cfg.on_error, split=cfg.split, score_key=cfg.score_key)
    records, tie_report = resolve_ties(list(loaded.records), cfg.ties, cfg.path)
    report += tie_report
    _report_skipped(cfg.path, loaded.skipped, report)
    if cfg.eval_path:
        eval_loaded = load_records(cfg.eval_path, kind=eval_kind or kind, on_error=cfg.on_error, split=cfg.split, score_key=cfg.score_key)
        eval_records, tie_report = resolve_ties(list(eval_loaded.records), cfg.ties, cfg.eval_path)
        report += tie_report
        _report_skipped(cfg.eval_path, eval_loaded.skipped, report)
    elif cfg.eval_fraction > 0 and len(records) >= MIN_RECORDS_TO_HOLD_OUT:
        order = list(range(len(records)))
        random.Random(seed).shuffle(order)
        n_eval = max(1, int(round(cfg.eval_fraction * len(records))))
        held = set(order[:n_eval])
        eval_records = [r for i, r in enumerate(records) if i in held]
        records = [r for i, r in enumerate(records) if i not in held]
    else:
        eval_records = []
        if cfg.eval_fraction > 0:
            report.append(
                f"eval: skipped: {cfg.path} has {len(records)} records, fewer than the {MIN_RECORDS_TO_HOLD_OUT} needed to hold "
                f"out data.eval_fraction={cfg.eval_fraction}; every record trains (set data.eval_path to evaluate)"
            )
    return records, eval_records, report


def prepare_data(tokenizer, cfg: DataConfig, kind: str, seed: int, eval_kind: str | None = None) -> PreparedData:
    """Load, validate, split and tokenize. ``kind``: demonstration, preference, ranking or unpaired;
    ``eval_kind``: that of ``cfg.eval_path`` when it differs (a reward model trained on rankings
    and evaluated on pairs), else the same."""
    records, eval_records, report = load_and_split(cfg, kind, seed, eval_kind)
    train = _encode(tokenizer, records, cfg, "train", report)
    evaluation = _encode(tokenizer, eval_records, cfg, "eval", report) if eval_records else []
    return PreparedData(train, evaluation, report)


# Below this many records no evaluation split is held out: it would be one or two examples.
MIN_RECORDS_TO_HOLD_OUT = 10


def _report_skipped(path: str, skipped: list, report: list[str]) -> None:
    """Report lines for the malformed rows of one file that data.on_error=skip passed over."""
    if not skipped:
        return
    report.append(f"{path}: skipped {len(skipped)} malformed rows (data.on_error=skip):")
    report += [f"  {err}" for err in skipped[:10]]
    if len(skipped) > 10:
        report.append(f"  ... and {len(skipped) - 10} more")
