"""Offline preference optimisation: the DPO family, trained straight from preference data.

One forward pass scores every sequence of a micro-batch (chosen and rejected together, or all K
completions of a ranking). By default the prompt they share runs once, its completions branching
off it (``tether.data.shared_prefix``; on the bundled pairs that is 30% fewer tokens); padded and
packed rows are the alternatives. Per-sequence log-probabilities come from token
log-probabilities summed with ``index_add``, so every layout gives the same numbers. The loss variant
is looked up in ``tether.losses.preference``; its spec tells this loop what data it needs and
whether a reference is required.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from tether.config import DPOConfig, PreferenceConfig, save_yaml
from tether.data.layouts import Layout, collate_layout, resolve_layout
from tether.trainers.offline import Example, FitResult, fit
from tether.trainers.reference import (
    CachedReference,
    ReferencePolicy,
    resolve_mode,
    sequence_logps,
)

# Which records each data layout reads, and the bundled set a run reads when data.path is 'auto'.
DATA_KIND = {"paired": "preference", "unpaired": "unpaired", "ranking": "ranking"}
BUNDLED_DATA = {"paired": "bundled:preferences", "unpaired": "bundled:unpaired", "ranking": "bundled:rankings"}


def resolve_data_path(path: str, data: str) -> str:
    """``data.path`` with 'auto' replaced by the bundled set that fits the loss's data layout."""
    return BUNDLED_DATA[data] if path == "auto" else path


def add_mismatched_completions(examples: list[Example], seed: int, max_length: int) -> None:
    """Give every unpaired example a second slot: its own prompt with *another* example's completion.

    KTO's reference point z0 estimates KL(π ‖ π_ref) from such mismatched pairs (x_i, y_j), so
    that it does not depend on whether the batch's own completions are desirable. The pairing is
    fixed once per data set (a seeded permutation, each example takes the completion of the next
    one in it), so a cached reference pass covers these sequences too and a resumed run sees the
    same ones. A spliced sequence longer than ``max_length`` loses the end of its completion.
    """
    if not examples:
        return
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed)).tolist()
    for pos, i in enumerate(order):
        ids, prompt_len = examples[i].sequences[0]
        other_ids, other_prompt_len = examples[order[(pos + 1) % len(order)]].sequences[0]
        spliced = (list(ids[:prompt_len]) + list(other_ids[other_prompt_len:]))[: max(max_length, prompt_len + 1)]
        examples[i].sequences = [(ids, prompt_len), (spliced, prompt_len)]


# Loss-function argument -> its key in the ``dpo`` config section.
CONFIG_KEYS = {
    "beta": "beta",
    "label_smoothing": "label_smoothing",
    "gamma": "simpo_gamma",
    "alpha": "rpo_alpha",
    "desirable_weight": "kto_desirable_weight",
    "undesirable_weight": "kto_undesirable_weight",
}


def loss_kwargs(cfg: PreferenceConfig) -> dict[str, float]:
    """Hyperparameters from the config, by the names the loss functions take."""
    return {arg: getattr(cfg, key) for arg, key in CONFIG_KEYS.items()}


def check_loss_settings(cfg: PreferenceConfig) -> None:
    """Refuse a ``dpo.*`` hyperparameter set away from its default for a loss that ignores it,
    naming the key and the losses that use it (before any model is loaded)."""
    from tether.config import ConfigError
    from tether.losses.preference import unused_hyperparameters

    ignored = unused_hyperparameters(cfg.loss, loss_kwargs(cfg))
    if ignored:
        lines = [f"dpo.{CONFIG_KEYS[arg]}={getattr(cfg, CONFIG_KEYS[arg])} does nothing with dpo.loss={cfg.loss}; it is used by {', '.join(users)}" for arg, users in ignored.items()]
        raise ConfigError("; ".join(lines) + " (leave it at its default, or pick a loss that uses it)")


@dataclass
class PreferenceObjective:
    loss_name: str
    hparams: dict[str, float]
    reference: ReferencePolicy | None
    pad_id: int
    layout: Layout = Layout.PACKED
    row_tokens: int = 512
    chunk_size: int = 1024

    def __post_init__(self):
        from tether.losses.preference import PreferenceLoss, spec_of

        self.kind = PreferenceLoss(self.loss_name)
        self.spec = spec_of(self.kind)

    def units(self, examples: list[Example]) -> float:
        return float(len(examples))

    def prepare(self, model: torch.nn.Module, examples: list[Example], dist=None) -> None:
        """Called by the loop before training: a cached reference computes what it lacks (under
        torchrun each process its share; ``dist``: the loop's ``Distributed``)."""
        if self.reference is not None:
            self.reference.prepare(model, examples, dist)

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

        from tether.parallel import device

        n, k = len(examples), len(examples[0].sequences)
        batch = collate_layout(self.layout, [e.sequences for e in examples], self.pad_id, self.row_tokens).to(device())
        logps = sequence_logps(model, batch, self.chunk_size).view(n, k)  # [N, K]
        lengths = batch.loss_tokens_per_sequence().view(n, k).clamp(min=1)  # [N, K]
        ref = self.reference.logps(model, batch, examples).to(logps.device).view(n, k) if self.spec.needs_reference else None
        real = k  # slots that are the example's own completions (KTO's second slot is a mismatched pair)
        if self.spec.data == "paired":
            tensors = {"policy_chosen": logps[:, 0], "policy_rejected": logps[:, 1], "chosen_len": lengths[:, 0], "rejected_len": lengths[:, 1]}
            if ref is not None:
                tensors.update(ref_chosen=ref[:, 0], ref_rejected=ref[:, 1])
        elif self.spec.data == "ranking":
            tensors = {"policy_logps": logps, "ref_logps": ref}
        else:  # unpaired: slot 0 is the example, slot 1 its prompt with another example's completion
            from tether.losses.preference import kto_reference_point

            real = 1
            labels = torch.tensor([bool(e.extra["label"]) for e in examples], device=logps.device)
            tensors = {"policy_logps": logps[:, 0], "ref_logps": ref[:, 0], "labels": labels, "kl_estimate": kto_reference_point(logps[:, 1], ref[:, 1])}
        losses, metrics = preference_loss(self.kind, **tensors, **self.hparams)  # [N], means
        if ref is not None:
            metrics["kl"] = self._kl_per_token(logps[:, :real], ref[:, :real], lengths[:, :real])
        # The loop wants sums over units (examples); metrics come back as batch means.
        return losses.sum(), {name: value.detach() * n for name, value in metrics.items()}


    @staticmethod
    def _kl_per_token(logps: torch.Tensor, ref: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Batch mean of each example's per-token log π − log π_ref over its completions, detached.

        The k1 estimator of KL(π ‖ π_ref) (tether.rl.kl), evaluated on the data's completions
        rather than on samples from π: it is the drift practitioners watch, not an unbiased KL.
        """
        from tether.rl.kl import kl_estimate

        per_example = kl_estimate("k1", logps.detach(), ref).sum(1) / lengths.sum(1)  # [N]
        return per_example.mean()


def build_objective(cfg: DPOConfig, model, tokenizer, data) -> PreferenceObjective:
    from tether.losses.preference import PreferenceLoss, spec_of

    spec = spec_of(PreferenceLoss(cfg.dpo.loss))
    reference = None
    layout = resolve_layout(cfg.dpo.share_prompt, cfg.data.pack)
    if spec.needs_reference:
        mode = resolve_mode(cfg.dpo.reference, cfg.lora.enabled)
        cache = None
        if mode == "cached":  # filled by prepare() with what the run uses (see tether.trainers.reference)
            cache = CachedReference(tokenizer.pad_token_id, layout, cfg.data.max_length, cfg.model.chunk_size, cfg.train.micro_batch_size, progress=cfg.train.progress)
        reference = ReferencePolicy(mode, model, cfg.model.chunk_size, cache)
    return PreferenceObjective(cfg.dpo.loss, loss_kwargs(cfg.dpo), reference, tokenizer.pad_token_id, layout, cfg.data.max_length, cfg.model.chunk_size)


def run_dpo(cfg: DPOConfig, reference_model=None) -> FitResult:
    """Train ``cfg.model`` with the preference loss ``cfg.dpo.loss``; saves to ``<output_dir>/model``.
    ``reference_model``: another model as the reference (a frozen copy of it; ``tether iterate``
    with iterate.reference=initial), instead of the model's own starting weights."""
    from tether.evaluate.periodic import build_policy_evaluator
    from tether.losses.preference import PreferenceLoss, spec_of
    from tether.models import save_model
    from tether.parallel import is_main
    from tether.trainers.common import load_trainable_model
    from tether.trainers.distributed import save_final_model
    from tether.trainers.prepare import prepare_data
    from tether.trainers.sft import sample_completions

    check_loss_settings(cfg.dpo)
    out = Path(cfg.train.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_yaml(cfg, out / "config.yaml")
    spec = spec_of(PreferenceLoss(cfg.dpo.loss))
    model, tokenizer = load_trainable_model(cfg.model, cfg.lora, cfg.train.seed)
    # 'auto' is resolved here, not written back: the saved config keeps what the user asked for.
    data_cfg = dataclasses.replace(cfg.data, path=resolve_data_path(cfg.data.path, spec.data))
    data = prepare_data(tokenizer, data_cfg, DATA_KIND[spec.data], cfg.train.seed)
    for line in data.report:
        print(line)
    if spec.data == "unpaired":
        add_mismatched_completions(data.train, cfg.train.seed, cfg.data.max_length)
        add_mismatched_completions(data.eval, cfg.train.seed + 1, cfg.data.max_length)
    objective = build_objective(cfg, model, tokenizer, data)
    if reference_model is not None:
        if not spec.needs_reference or cfg.dpo.reference != "copy":
            raise ValueError(f"a separate reference model needs a loss with a reference and dpo.reference=copy (got {cfg.dpo.loss}, {cfg.dpo.reference})")
        objective.reference = ReferencePolicy("copy", reference_model, cfg.model.chunk_size)
    # policy_eval's reference is the starting model: the objective's frozen copy is it unless another model was given.
    held = objective.reference.frozen if objective.reference is not None and reference_model is None else None
    evaluator = build_policy_evaluator(cfg.policy_eval, out, model, tokenizer, held_reference=held, distributed=cfg.train.distributed)
    result = fit(model, objective, data.train, data.eval, cfg.train, title=cfg.dpo.loss, report=data.report, policy_eval=evaluator)
    model = result.model  # whole (None on the other processes of a sharded run)
    save_final_model(save_model, model, tokenizer, out / "model")
    print(f"saved model to {out / 'model'}")
    if cfg.train.sample_prompts and is_main():
        for prompt, reply in zip(cfg.train.sample_prompts, sample_completions(model, tokenizer, cfg.train.sample_prompts, cfg.train.sample_max_new_tokens)):
            print(f"\n### {prompt}\n{reply}")
    return result
