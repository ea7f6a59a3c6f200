"""Offline preference losses: the DPO family.

Every loss is a plain function of per-sequence log-probability *sums* (one number per
completion: Σ_t log π(y_t | y_<t, x) over its completion tokens) and keyword hyperparameters;
it returns ``(losses [N], metrics)`` with metrics as detached batch means.

Notation used in the docstrings, for a batch of N pairs:

* πc, πr: policy log-prob sums of the chosen / rejected completion, [N];
* rc, rr: the same under the frozen reference policy, [N];
* Lc, Lr: completion lengths in tokens, [N] (for the per-token-mean variants);
* h = (πc − rc) − (πr − rr): the difference of implicit log-ratios.

``PreferenceLoss`` names the variants; ``spec_of(kind)`` answers what a trainer must know
(does it need a reference? pairs, unpaired labels or rankings?), and
``preference_loss(kind, **tensors_and_hparams)`` dispatches through the same table.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Literal

import torch
import torch.nn.functional as F

from tether.losses.reduce import masked_mean
from tether.losses.reward import pairwise_accuracy, plackett_luce_nll, ranking_accuracy
from tether.rl.logprobs import log1mexp

Metrics = dict[str, torch.Tensor]


class PreferenceLoss(str, Enum):
    DPO = "dpo"
    CDPO = "cdpo"
    ROBUST = "robust"
    IPO = "ipo"
    HINGE = "hinge"
    SIMPO = "simpo"
    ORPO = "orpo"
    RPO = "rpo"
    KTO = "kto"
    LISTWISE = "listwise"

    # The members answer the trainer's questions by reading their row of PREFERENCE_LOSSES.
    @property
    def spec(self) -> PreferenceSpec:
        return PREFERENCE_LOSSES[self]

    @property
    def needs_reference(self) -> bool:
        return self.spec.needs_reference

    @property
    def length_normalized(self) -> bool:
        return self.spec.length_normalized

    @property
    def data(self) -> str:
        """'paired', 'unpaired' or 'ranking'."""
        return self.spec.data


# --------------------------------------------------------------------------- shared pieces


def _paired_metrics(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, policy_chosen: torch.Tensor, policy_rejected: torch.Tensor) -> Metrics:
    """The metrics every paired loss reports, under the same names."""
    c, r = chosen_rewards.detach(), rejected_rewards.detach()
    return {
        "rewards/chosen": c.mean(),
        "rewards/rejected": r.mean(),
        "rewards/margin": (c - r).mean(),
        "rewards/accuracy": pairwise_accuracy(c, r),  # ties count 1/2, as in `tether rm eval`
        "logps/chosen": policy_chosen.detach().mean(),
        "logps/rejected": policy_rejected.detach().mean(),
    }


def _reference_paired(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta) -> tuple[torch.Tensor, Metrics]:
    """h = (πc − rc) − (πr − rr) [N] and the metrics of the implicit rewards β(π − r)."""
    chosen_ratio = policy_chosen - ref_chosen  # [N]
    rejected_ratio = policy_rejected - ref_rejected  # [N]
    metrics = _paired_metrics(beta * chosen_ratio, beta * rejected_ratio, policy_chosen, policy_rejected)
    return chosen_ratio - rejected_ratio, metrics


def _sigmoid_losses(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(−log σ(z), −log σ(−z)): the loss if the label is right, and if it is flipped."""
    return -F.logsigmoid(logits), -F.logsigmoid(-logits)


# --------------------------------------------------------------------------- paired, with reference


def dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, *, beta: float = 0.1) -> tuple[torch.Tensor, Metrics]:
    """DPO (Rafailov et al. 2023): loss = −log σ(β·h), h = (πc − rc) − (πr − rr).

    All inputs [N] log-prob sums; returns losses [N].
    """
    return cdpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=beta, label_smoothing=0.0)


def cdpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, *, beta: float = 0.1, label_smoothing: float = 0.0) -> tuple[torch.Tensor, Metrics]:
    """Conservative DPO (label smoothing ε, Mitchell 2023):

        loss = −(1 − ε)·log σ(β·h) − ε·log σ(−β·h)

    the DPO loss in expectation over labels that are flipped with probability ε. Its minimum
    is at a finite margin, so it does not push h to infinity. ε = 0 gives DPO.
    """
    h, metrics = _reference_paired(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)
    right, flipped = _sigmoid_losses(beta * h)  # [N], [N]
    return (1 - label_smoothing) * right + label_smoothing * flipped, metrics


def robust_dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, *, beta: float = 0.1, label_smoothing: float = 0.0) -> tuple[torch.Tensor, Metrics]:
    """Robust DPO (Chowdhury et al. 2024), unbiased under labels flipped with probability ε:

        loss = [(1 − ε)·(−log σ(β·h)) − ε·(−log σ(−β·h))] / (1 − 2ε)

    Its expectation over noisy labels equals the clean DPO loss. Needs ε < 1/2.
    """
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"robust DPO needs 0 <= label_smoothing < 0.5, got {label_smoothing}")
    h, metrics = _reference_paired(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)
    right, flipped = _sigmoid_losses(beta * h)
    return ((1 - label_smoothing) * right - label_smoothing * flipped) / (1 - 2 * label_smoothing), metrics


def ipo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, chosen_len, rejected_len, *, beta: float = 0.1) -> tuple[torch.Tensor, Metrics]:
    """IPO (Azar et al. 2023) on *average log-prob per token*:

        h̄ = (πc − rc)/Lc − (πr − rr)/Lr,    loss = (h̄ − 1/(2β))²

    The paper's h uses sums; the widely used implementation averages each log-ratio over its
    completion's tokens, which keeps 1/(2β) on a per-token scale. Lengths [N] in tokens.
    Reported rewards are β·(π − r) on sums, as for every reference-based loss.
    """
    chosen_len, rejected_len = chosen_len.to(policy_chosen.dtype), rejected_len.to(policy_chosen.dtype)
    _, metrics = _reference_paired(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)
    h_mean = (policy_chosen - ref_chosen) / chosen_len - (policy_rejected - ref_rejected) / rejected_len  # [N]
    return (h_mean - 1 / (2 * beta)) ** 2, metrics


def hinge_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, *, beta: float = 0.1) -> tuple[torch.Tensor, Metrics]:
    """SLiC hinge (Zhao et al. 2023) on the DPO log-ratio: loss = max(0, 1 − β·h)."""
    h, metrics = _reference_paired(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)
    return torch.relu(1 - beta * h), metrics


def rpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, chosen_len, *, beta: float = 0.1, alpha: float = 1.0) -> tuple[torch.Tensor, Metrics]:
    """RPO (Pang et al. 2024, iterative reasoning PO): DPO plus α × the chosen NLL per token.

        loss = −log σ(β·h) + α·(−πc / Lc)
    """
    losses, metrics = dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=beta)
    nll = -policy_chosen / chosen_len.to(policy_chosen.dtype)  # [N]
    metrics["nll/chosen"] = nll.detach().mean()
    return losses + alpha * nll, metrics


# --------------------------------------------------------------------------- paired, reference-free


def simpo_loss(
    policy_chosen, policy_rejected, chosen_len, rejected_len, *, beta: float = 2.0, gamma: float = 0.5, gamma_beta_ratio: float | None = None
) -> tuple[torch.Tensor, Metrics]:
    """SimPO (Meng et al. 2024), reference-free, on average log-prob per token:

        loss = −log σ(β·(πc/Lc − πr/Lr) − γ)

    γ is the target reward margin; give ``gamma_beta_ratio`` instead to set γ = ratio·β (the
    paper's parameterisation). Rewards reported: β·π/L, SimPO's implicit reward.
    """
    if gamma_beta_ratio is not None:
        gamma = gamma_beta_ratio * beta
    chosen_reward = beta * policy_chosen / chosen_len.to(policy_chosen.dtype)  # [N]
    rejected_reward = beta * policy_rejected / rejected_len.to(policy_rejected.dtype)  # [N]
    metrics = _paired_metrics(chosen_reward, rejected_reward, policy_chosen, policy_rejected)
    return -F.logsigmoid(chosen_reward - rejected_reward - gamma), metrics


def orpo_loss(policy_chosen, policy_rejected, chosen_len, rejected_len, *, beta: float = 0.1) -> tuple[torch.Tensor, Metrics]:
    """ORPO (Hong et al. 2024), reference-free; ``beta`` is the paper's λ:

        p̄ = π/L (average log-prob per token),  log-odds(p̄) = p̄ − log(1 − exp(p̄))
        loss = −πc/Lc − λ·log σ(log-odds(p̄c) − log-odds(p̄r))

    log(1 − exp(p̄)) is computed without cancellation; p̄ is clamped to ≤ −1e-6 so a completion
    the policy predicts with certainty (p̄ = 0) does not make the odds infinite. Reported
    rewards: β·p̄ (what the odds are built from); ``orpo/log_odds_ratio`` is the mean of the
    σ argument.
    """
    mean_chosen = (policy_chosen / chosen_len.to(policy_chosen.dtype)).clamp(max=-1e-6)  # [N]
    mean_rejected = (policy_rejected / rejected_len.to(policy_rejected.dtype)).clamp(max=-1e-6)  # [N]
    log_odds_ratio = (mean_chosen - log1mexp(mean_chosen)) - (mean_rejected - log1mexp(mean_rejected))  # [N]
    nll = -mean_chosen
    metrics = _paired_metrics(beta * mean_chosen, beta * mean_rejected, policy_chosen, policy_rejected)
    metrics["nll/chosen"] = nll.detach().mean()
    metrics["orpo/log_odds_ratio"] = log_odds_ratio.detach().mean()
    return nll - beta * F.logsigmoid(log_odds_ratio), metrics


# --------------------------------------------------------------------------- unpaired


def kto_reference_point(policy_logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """KTO's reference point z0 = max(0, mean(π − r)), detached (a scalar).

    The paper estimates KL(π ‖ π_ref) from *mismatched* pairs: completions y_j scored under
    another example's prompt x_i, so that the estimate does not depend on the batch's labels.
    tether's trainer passes those (``tether.trainers.dpo.add_mismatched_completions`` gives each
    example a mismatched slot, scored in the same forward pass). Passing the batch's own
    (π, r) gives the mean implicit reward of the batch, a cruder but common stand-in; either
    way it is a per-batch estimate, so accumulated micro-batches each use their own.
    """
    return (policy_logps - ref_logps).detach().mean().clamp(min=0)


def kto_loss(
    policy_logps,
    ref_logps,
    labels,
    *,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
    kl_estimate: torch.Tensor | float | None = None,
) -> tuple[torch.Tensor, Metrics]:
    """KTO (Ethayarajh et al. 2024) on unpaired examples.

        r = π − r_ref  (implicit reward, log-prob sums),   z0 = max(0, KL estimate), detached
        desirable   (label True):  loss = w_d·(1 − σ(β·(r − z0)))
        undesirable (label False): loss = w_u·(1 − σ(β·(z0 − r)))

    ``policy_logps``, ``ref_logps`` [N]; ``labels`` [N] bool. ``kl_estimate`` is a scalar (see
    ``kto_reference_point``); when None it is estimated from this batch. Metrics:
    ``rewards/chosen`` / ``rewards/rejected`` are the mean β·r over desirable / undesirable
    examples (0 when a batch has none), ``kto/kl`` is z0.
    """
    labels = labels.bool()
    reward = policy_logps - ref_logps  # [N]
    if kl_estimate is None:
        z0 = kto_reference_point(policy_logps, ref_logps)
    else:
        z0 = torch.as_tensor(kl_estimate, dtype=reward.dtype, device=reward.device).detach().clamp(min=0)
    desirable = desirable_weight * (1 - torch.sigmoid(beta * (reward - z0)))  # [N]
    undesirable = undesirable_weight * (1 - torch.sigmoid(beta * (z0 - reward)))  # [N]
    losses = torch.where(labels, desirable, undesirable)
    r = (beta * reward).detach()
    metrics = {
        "rewards/chosen": masked_mean(r, labels),
        "rewards/rejected": masked_mean(r, ~labels),
        "logps/chosen": masked_mean(policy_logps.detach(), labels),
        "logps/rejected": masked_mean(policy_logps.detach(), ~labels),
        "kto/kl": z0.detach(),
    }
    return losses, metrics


# --------------------------------------------------------------------------- rankings


def listwise_loss(policy_logps, ref_logps, *, beta: float = 0.1, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, Metrics]:
    """Listwise DPO: Plackett–Luce NLL of a best-first ranking over implicit rewards.

        s_k = β·(π_k − r_k),   loss = Σ_k [−s_k + logsumexp(s_k, …, s_K)]

    ``policy_logps``, ``ref_logps`` [N, K] best first; ``mask`` [N, K] for rankings with fewer
    than K completions. With K = 2 this is DPO. Metrics: ``rewards/chosen`` (the best
    completion), ``rewards/rejected`` (mean of the others), ``rewards/margin`` and
    ``rewards/accuracy`` over every ordered pair of the ranking.
    """
    valid = torch.ones_like(policy_logps, dtype=torch.bool) if mask is None else mask.bool()
    scores = beta * (policy_logps - ref_logps)  # [N, K]
    losses = plackett_luce_nll(scores, valid)  # [N]
    accuracy, margin = ranking_accuracy(scores, valid)
    s = scores.detach()
    metrics = {
        "rewards/chosen": s[:, 0].mean(),
        "rewards/rejected": masked_mean(s[:, 1:], valid[:, 1:]),
        "rewards/margin": margin,
        "rewards/accuracy": accuracy,
        "logps/chosen": policy_logps.detach()[:, 0].mean(),
        "logps/rejected": masked_mean(policy_logps.detach()[:, 1:], valid[:, 1:]),
    }
    return losses, metrics


# --------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class PreferenceSpec:
    """What a trainer needs to know about a preference loss."""

    loss_fn: Callable[..., tuple[torch.Tensor, Metrics]]
    needs_reference: bool  # takes reference log-probs (ref_chosen/ref_rejected or ref_logps)
    length_normalized: bool  # its preference term compares mean per-token log-probs, not sums
    data: Literal["paired", "unpaired", "ranking"]
    needs_chosen_nll: bool  # adds an NLL term on the chosen completion

    @property
    def needs_lengths(self) -> bool:
        """Takes completion lengths (chosen_len / rejected_len)."""
        return "chosen_len" in inspect.signature(self.loss_fn).parameters


PREFERENCE_LOSSES: dict[PreferenceLoss, PreferenceSpec] = {
    PreferenceLoss.DPO: PreferenceSpec(dpo_loss, True, False, "paired", False),
    PreferenceLoss.CDPO: PreferenceSpec(cdpo_loss, True, False, "paired", False),
    PreferenceLoss.ROBUST: PreferenceSpec(robust_dpo_loss, True, False, "paired", False),
    PreferenceLoss.IPO: PreferenceSpec(ipo_loss, True, True, "paired", False),
    PreferenceLoss.HINGE: PreferenceSpec(hinge_loss, True, False, "paired", False),
    PreferenceLoss.SIMPO: PreferenceSpec(simpo_loss, False, True, "paired", False),
    PreferenceLoss.ORPO: PreferenceSpec(orpo_loss, False, True, "paired", True),
    PreferenceLoss.RPO: PreferenceSpec(rpo_loss, True, False, "paired", True),
    PreferenceLoss.KTO: PreferenceSpec(kto_loss, True, False, "unpaired", False),
    PreferenceLoss.LISTWISE: PreferenceSpec(listwise_loss, True, False, "ranking", False),
}

# Every argument name some variant takes: a trainer may pass all of them (one kwargs dict from
# its config) and each variant picks its own; a name outside this set is a typo and raises.
_KNOWN_ARGUMENTS = frozenset(name for spec in PREFERENCE_LOSSES.values() for name in inspect.signature(spec.loss_fn).parameters)


def _hyperparameter_users() -> dict[str, dict[PreferenceLoss, object]]:
    """{hyperparameter: {variant that takes it: its default}}, read from the table's signatures.

    Hyperparameters are the keyword-only arguments; the positional ones are tensors of the batch
    (log-probs, lengths), which a trainer may hand every variant of a data layout.
    """
    users: dict[str, dict[PreferenceLoss, object]] = {}
    for kind, spec in PREFERENCE_LOSSES.items():
        for name, p in inspect.signature(spec.loss_fn).parameters.items():
            if p.kind is inspect.Parameter.KEYWORD_ONLY:
                users.setdefault(name, {})[kind] = p.default
    return users


HYPERPARAMETER_USERS = _hyperparameter_users()


def _is_default(value: object, defaults: dict[PreferenceLoss, object]) -> bool:
    """Whether ``value`` equals the default of every variant that takes the argument."""
    for default in defaults.values():
        if default is None or value is None:
            if not (default is None and value is None):
                return False
        elif isinstance(value, torch.Tensor) or float(value) != float(default):
            return False
    return True


def unused_hyperparameters(kind: PreferenceLoss | str, hparams: dict[str, object]) -> dict[str, list[str]]:
    """{name: variants that use it} for every hyperparameter in ``hparams`` that variant ``kind``
    does not take and that is set away from its default (so it would silently do nothing)."""
    kind = PreferenceLoss(kind)
    out = {}
    for name, value in hparams.items():
        users = HYPERPARAMETER_USERS.get(name)
        if users is None or kind in users or _is_default(value, users):
            continue
        out[name] = [k.value for k in users]
    return out


def spec_of(kind: PreferenceLoss | str) -> PreferenceSpec:
    """The spec of a loss variant, by enum member or its string value."""
    return PREFERENCE_LOSSES[PreferenceLoss(kind)]


def preference_loss(kind: PreferenceLoss | str, **tensors_and_hparams) -> tuple[torch.Tensor, Metrics]:
    """Compute the loss ``kind`` -> (losses [N], metrics).

    Arguments any variant understands may be passed to all of them: a variant drops the batch
    tensors it does not take (``chosen_len`` for hinge) and hyperparameters it does not take that
    are left at their defaults (``alpha=1.0`` for DPO). A hyperparameter it does not take set to
    anything else would be silently ignored, so it raises ``ValueError`` naming the key and the
    variants that use it. Unknown names raise ``TypeError``, and so do missing ones the variant needs.
    """
    unknown = set(tensors_and_hparams) - _KNOWN_ARGUMENTS
    if unknown:
        raise TypeError(f"preference_loss: unknown argument(s) {sorted(unknown)}; known: {sorted(_KNOWN_ARGUMENTS)}")
    ignored = unused_hyperparameters(kind, tensors_and_hparams)
    if ignored:
        shown = {name: "<tensor>" if isinstance(v, torch.Tensor) else repr(v) for name, v in tensors_and_hparams.items()}
        said = "; ".join(f"{name}={shown[name]} is used only by {', '.join(users)}" for name, users in ignored.items())
        raise ValueError(f"preference_loss: the {PreferenceLoss(kind).value} loss does not use {sorted(ignored)}: {said}")
    spec = spec_of(kind)
    accepted = inspect.signature(spec.loss_fn).parameters
    return spec.loss_fn(**{name: value for name, value in tensors_and_hparams.items() if name in accepted})
