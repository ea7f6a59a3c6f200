"""LoRA adapters through PEFT, and the reference policy they give for free.

With adapters on a frozen base, the reference policy of DPO/PPO/GRPO is the same model with
its adapters switched off: no second copy of the weights.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Sequence


def is_peft_model(model) -> bool:
    """True for a model wrapped by ``peft.get_peft_model``."""
    import sys

    if "peft" not in sys.modules:  # nothing can be a PeftModel before peft is imported; importing it costs ~0.7 s
        return False
    try:
        from peft import PeftModel
    except ImportError:  # peft is a dependency, but a plain model needs no adapter logic
        return False
    return isinstance(model, PeftModel)


def apply_lora(
    model,
    r: int = 16,
    alpha: float = 32,
    dropout: float = 0.0,
    target_modules: str | Sequence[str] = "all-linear",
):
    """Wrap ``model`` with fresh LoRA adapters; only adapter weights stay trainable.

    ``target_modules="all-linear"`` adapts every linear layer except the output head (PEFT's
    rule); a list names module suffixes, e.g. ``["q_proj", "v_proj"]``. The adapters start as
    a no-op (B = 0), so the wrapped model's outputs equal the base model's until it trains.
    """
    from peft import LoraConfig, get_peft_model

    targets = target_modules if isinstance(target_modules, str) else list(target_modules)
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets,
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def parse_target_modules(text: str) -> str | list[str]:
    """``lora.target_modules`` as ``apply_lora`` takes it: 'all-linear', or the comma-separated names as a list."""
    return text if text == "all-linear" else [t.strip() for t in text.split(",")]


def lora_arguments(cfg) -> dict:
    """The keyword arguments of ``apply_lora`` for a ``LoRAConfig`` (``enabled`` is the caller's business)."""
    return {"r": cfg.r, "alpha": cfg.alpha, "dropout": cfg.dropout, "target_modules": parse_target_modules(cfg.target_modules)}


@contextlib.contextmanager
def disabled_adapter(model):
    """Within the block, ``model`` computes as its base model (the reference policy).

    Raises ``TypeError`` for a model without adapters: with full fine-tuning the reference
    must be a separate frozen copy, and silently using the trained model would make every
    KL term zero.
    """
    if not is_peft_model(model):
        raise TypeError("disabled_adapter needs a PEFT (LoRA) model; with full fine-tuning keep a separate reference model")
    with model.disable_adapter():
        yield model


def merge_and_unload(model):
    """A plain transformers model with the adapters folded into the weights; the input is consumed.

    PEFT merges in place, so ``model`` must not be used afterwards; use ``merged_copy`` to keep
    training the adapter model. A model without adapters is returned unchanged.
    """
    if not is_peft_model(model):
        return model
    return model.merge_and_unload()


def merged_copy(model):
    """Like ``merge_and_unload`` on a deep copy: ``model`` keeps its adapters."""
    if not is_peft_model(model):
        return model
    return copy.deepcopy(model).merge_and_unload()


__all__ = ["apply_lora", "disabled_adapter", "is_peft_model", "lora_arguments", "merge_and_unload", "merged_copy", "parse_target_modules"]
