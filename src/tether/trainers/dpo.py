"""Offline preference optimisation: the DPO family, trained straight from preference data.

One forward pass scores every sequence of a micro-batch (chosen and rejected together, or all K
completions of a ranking); per-sequence log-probabilities come from token log-probabilities
summed with ``index_add`` so padded and packed layouts give the same numbers. The loss variant
is looked up in ``tether.losses.preference``; its spec tells this loop what data it needs and
whether a reference is required.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from tether.config import DPOConfig, PreferenceConfig, save_yaml
from tether.data.batches import collate
from tether.trainers.offline import Example, FitResult, fit
from tether.trainers.reference import ReferencePolicy, attach_cached_reference, resolve_mode, sequence_logps

# Which records each data layout reads.
DATA_KIND = {"paired": "preference", "unpaired": "unpaired", "ranking": "ranking"}


def loss_kwargs(cfg: PreferenceConfig) -> dict[str, float]:
    """Hyperparameters from the config, by the names the loss functions take."""
    return {
        "beta": cfg.beta,
        "label_smoothing": cfg.label_smoothing,
        "gamma": cfg.simpo_gamma,
        "alpha": cfg.rpo_alpha,
        "desirable_weight": cfg.kto_desirable_weight,
        "undesirable_weight": cfg.kto_undesirable_weight,
    }


@dataclass
class PreferenceObjective:
    loss_name: str
    hparams: dict[str, float]
    reference: ReferencePolicy | None
    pad_id: int
    pack: bool = False
    row_tokens: int = 512
    chunk_size: int = 1024

    def __post_init__(self):
        from tether.losses.preference import PreferenceLoss, spec_of

        self.kind = PreferenceLoss(self.loss_name)
        self.spec = spec_of(self.kind)

    def units(self, examples: list[Example]) -> float:
        return float(len(examples))

    def loss(self, model: torch.nn.Module, examples: list[Example]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        # Rankings may hold different numbers of completions; each size is its own forward pass.
        by_size: dict[int, list[Example]] = {}
        for e in examples:
            by_size.setdefault(len(e.sequences), []).append(e)
        total = torch.zeros(())
        metric_sums: dict[str, torch.Tensor] = {}
        for group in by_size.values():
            loss_sum, metrics = self._group_loss(model, group)
            total = total + loss_sum
            for k, v in metrics.items():
                metric_sums[k] = metric_sums.get(k, 0.0) + v
        return total, metric_sums

    def _group_loss(self, model, examples: list[Example]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        from tether.losses.preference import preference_loss

        n, k = len(examples), len(examples[0].sequences)
        batch = collate([e.sequences for e in examples], self.pad_id, self.pack, self.row_tokens)
        logps = sequence_logps(model, batch, self.chunk_size).view(n, k)  # [N, K]
        lengths = batch.loss_tokens_per_sequence().view(n, k).clamp(min=1)  # [N, K]
        ref = self.reference.logps(model, batch, examples).view(n, k) if self.spec.needs_reference else None
        if self.spec.data == "paired":
            tensors = {"policy_chosen": logps[:, 0], "policy_rejected": logps[:, 1], "chosen_len": lengths[:, 0], "rejected_len": lengths[:, 1]}
            if ref is not None:
                tensors.update(ref_chosen=ref[:, 0], ref_rejected=ref[:, 1])
        elif self.spec.data == "ranking":
            tensors = {"policy_logps": logps, "ref_logps": ref}
        else:  # unpaired
            labels = torch.tensor([bool(e.extra["label"]) for e in examples])
            tensors = {"policy_logps": logps[:, 0], "ref_logps": ref[:, 0], "labels": labels}
        losses, metrics = preference_loss(self.kind, **tensors, **self.hparams)  # [N], means
        # The loop wants sums over units (examples); metrics come back as batch means.
        return losses.sum(), {name: value.detach() * n for name, value in metrics.items()}


def build_objective(cfg: DPOConfig, model, tokenizer, data) -> PreferenceObjective:
    from tether.losses.preference import PreferenceLoss, spec_of

    spec = spec_of(PreferenceLoss(cfg.dpo.loss))
    reference = None
    if spec.needs_reference:
        mode = resolve_mode(cfg.dpo.reference, cfg.lora.enabled)
        if mode == "cached":
            path = attach_cached_reference(
                model, {"train": data.train, "eval": data.eval}, tokenizer.pad_token_id, cfg.data.pack, cfg.data.max_length, cfg.model.chunk_size, cfg.train.micro_batch_size
            )
            print(f"reference log-probabilities cached at {path}")
        reference = ReferencePolicy(mode, model, cfg.model.chunk_size)
    return PreferenceObjective(cfg.dpo.loss, loss_kwargs(cfg.dpo), reference, tokenizer.pad_token_id, cfg.data.pack, cfg.data.max_length, cfg.model.chunk_size)


def run_dpo(cfg: DPOConfig) -> FitResult:
    """Train ``cfg.model`` with the preference loss ``cfg.dpo.loss``; saves to ``<output_dir>/model``."""
    from tether.losses.preference import PreferenceLoss, spec_of
    from tether.models import save_model
    from tether.trainers.common import load_trainable_model
    from tether.trainers.prepare import prepare_data
    from tether.trainers.sft import sample_completions

    out = Path(cfg.train.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_yaml(cfg, out / "config.yaml")
    spec = spec_of(PreferenceLoss(cfg.dpo.loss))
    model, tokenizer = load_trainable_model(cfg.model, cfg.lora, cfg.train.seed)
    data = prepare_data(tokenizer, cfg.data, DATA_KIND[spec.data], cfg.train.seed)
    for line in data.report:
        print(line)
    objective = build_objective(cfg, model, tokenizer, data)
    result = fit(model, objective, data.train, data.eval, cfg.train, title=cfg.dpo.loss)
    save_model(model, tokenizer, out / "model")
    print(f"saved model to {out / 'model'}")
    if cfg.train.sample_prompts:
        for prompt, reply in zip(cfg.train.sample_prompts, sample_completions(model, tokenizer, cfg.train.sample_prompts, cfg.train.sample_max_new_tokens)):
            print(f"\n### {prompt}\n{reply}")
    return result
