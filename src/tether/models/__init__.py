"""Models: loading (HF directory, GGUF file, the bundled default), tiny test models, LoRA, saving,
and forward passes that yield per-token log-probabilities without full-vocabulary logits.

Importing this subpackage imports torch; transformers and peft load when a function needs them.
"""

from tether.models.forward import backbone_and_head, forward_hidden, forward_token_logprobs, unwrap_peft
from tether.models.lean import apply_lean_activations
from tether.models.loading import ModelLoadError, cache_root, default_gguf_path, default_model_dir, load_model
from tether.models.lora import apply_lora, disabled_adapter, is_peft_model, merge_and_unload, merged_copy
from tether.models.saving import save_model
from tether.models.tiny import tiny_model, tiny_model_and_tokenizer, tiny_tokenizer

__all__ = [
    "ModelLoadError",
    "apply_lean_activations",
    "apply_lora",
    "backbone_and_head",
    "cache_root",
    "default_gguf_path",
    "default_model_dir",
    "disabled_adapter",
    "forward_hidden",
    "forward_token_logprobs",
    "is_peft_model",
    "load_model",
    "merge_and_unload",
    "merged_copy",
    "save_model",
    "tiny_model",
    "tiny_model_and_tokenizer",
    "tiny_tokenizer",
    "unwrap_peft",
]
