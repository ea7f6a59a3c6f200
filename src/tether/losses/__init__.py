"""Loss functions: pure functions of tensors -> (per-example or per-token losses, detached metrics).

Modules: ``reduce`` (masked sums/means with explicit normalisers), ``sft``, ``preference`` (the
DPO family, ``PreferenceLoss`` + ``spec_of`` + ``preference_loss``), ``reward`` (Bradley–Terry,
Plackett–Luce), ``policy`` (PPO clip, GRPO, entropy), ``value`` (clipped value loss).
"""

from tether.losses.policy import entropy_bonus, entropy_from_logits, grpo_loss, ppo_clip_loss
from tether.losses.preference import PREFERENCE_LOSSES, PreferenceLoss, PreferenceSpec, kto_reference_point, preference_loss, spec_of
from tether.losses.reduce import masked_mean, masked_sum, masked_var, sum_per_sequence, token_mean_global
from tether.losses.reward import bradley_terry_loss, plackett_luce_loss, plackett_luce_nll
from tether.losses.sft import sft_loss
from tether.losses.value import clipped_value_loss, explained_variance

__all__ = [
    "PREFERENCE_LOSSES",
    "PreferenceLoss",
    "PreferenceSpec",
    "bradley_terry_loss",
    "clipped_value_loss",
    "entropy_bonus",
    "entropy_from_logits",
    "explained_variance",
    "grpo_loss",
    "kto_reference_point",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "plackett_luce_loss",
    "plackett_luce_nll",
    "ppo_clip_loss",
    "preference_loss",
    "sft_loss",
    "spec_of",
    "sum_per_sequence",
    "token_mean_global",
]
