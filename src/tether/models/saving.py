"""Save a model and tokenizer as a Hugging Face directory (safetensors), atomically.

Everything is written into a temporary sibling directory first and renamed into place, so a
crash mid-save leaves the previous save (or nothing), never a mix of old and new files.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def save_model(model, tokenizer, out_dir: str | os.PathLike, merge_lora: bool = True) -> Path:
    """Write ``model`` and ``tokenizer`` to ``out_dir`` in Hugging Face format with safetensors weights.

    With ``merge_lora`` (the default), a PEFT model is saved with its adapters merged into a
    copy of the base weights, so ``AutoModelForCausalLM.from_pretrained(out_dir)`` loads it
    with no PEFT involved; the live model keeps its adapters and can go on training. With
    ``merge_lora=False`` a PEFT model saves only its adapter (PEFT format). An existing
    ``out_dir`` is replaced. Returns ``out_dir`` as a ``Path``.
    """
    from tether.models.lora import is_peft_model, merged_copy

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    to_save = merged_copy(model) if (merge_lora and is_peft_model(model)) else model
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        staging.chmod(0o755)  # mkdtemp makes it private (0700); a saved model is as readable as any output
        to_save.save_pretrained(staging)  # transformers 5 writes safetensors only
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        _replace_dir(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def _replace_dir(new: Path, target: Path) -> None:
    """Move ``new`` to ``target``; an old ``target`` is set aside first and restored if the move fails.

    Two renames are not one atomic step, but at every instant either the complete old or the
    complete new directory exists under one of the two names.
    """
    if not target.exists():
        os.replace(new, target)
        return
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(target, old)
    try:
        os.replace(new, target)
    except BaseException:
        os.replace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


__all__ = ["save_model"]
