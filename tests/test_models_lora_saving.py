"""LoRA adapters, the adapter-off reference, atomic saving, and loading by name or path."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tether.models import (
    ModelLoadError,
    apply_lora,
    disabled_adapter,
    is_peft_model,
    load_model,
    merge_and_unload,
    save_model,
    tiny_model_and_tokenizer,
)

IDS = torch.tensor([[72, 105, 32, 116, 104, 101, 114, 101]])


def logits_of(model):
    with torch.no_grad():
        return model(input_ids=IDS).logits


def perturb_adapters(model, seed=0):
    """Give the LoRA B matrices (zero at init) random values so the adapter changes outputs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)


@pytest.fixture
def tiny():
    return tiny_model_and_tokenizer(seed=0)


def test_apply_lora_trains_only_adapters_and_starts_as_identity(tiny):
    model, _ = tiny
    base = logits_of(model)
    peft_model = apply_lora(model, r=4, alpha=8, target_modules=["q_proj", "v_proj"])
    assert is_peft_model(peft_model)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert all(("q_proj" in n or "v_proj" in n) for n in trainable)
    torch.testing.assert_close(logits_of(peft_model), base)


def test_all_linear_skips_the_lm_head(tiny):
    peft_model = apply_lora(tiny[0], r=2)
    adapted = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n, _ in peft_model.named_parameters() if "lora_A" in n}
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def test_disabled_adapter_gives_the_base_model(tiny):
    model, _ = tiny
    base = logits_of(model)
    peft_model = apply_lora(model, r=4, alpha=8)
    perturb_adapters(peft_model)
    adapted = logits_of(peft_model)
    assert not torch.allclose(adapted, base, atol=1e-3)
    with disabled_adapter(peft_model) as reference:
        torch.testing.assert_close(logits_of(reference), base)
    torch.testing.assert_close(logits_of(peft_model), adapted)  # adapters back on after the block


def test_disabled_adapter_refuses_a_plain_model(tiny):
    with pytest.raises(TypeError, match="separate reference"):
        with disabled_adapter(tiny[0]):
            pass


def test_save_merged_lora_loads_as_plain_model(tiny, tmp_path):
    model, tok = tiny
    peft_model = apply_lora(model, r=4, alpha=8)
    perturb_adapters(peft_model)
    expected = logits_of(peft_model)
    out = save_model(peft_model, tok, tmp_path / "out")
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert not is_peft_model(reloaded)
    torch.testing.assert_close(logits_of(reloaded), expected, rtol=1e-5, atol=1e-5)
    # The live model still has its adapters and can keep training.
    assert is_peft_model(peft_model) and any("lora_" in n for n, _ in peft_model.named_parameters())
    torch.testing.assert_close(logits_of(peft_model), expected)
    assert AutoTokenizer.from_pretrained(out)("Hi").input_ids == tok("Hi").input_ids


def test_merge_and_unload_returns_plain_model(tiny):
    peft_model = apply_lora(tiny[0], r=4, alpha=8)
    perturb_adapters(peft_model)
    expected = logits_of(peft_model)
    plain = merge_and_unload(peft_model)
    assert not is_peft_model(plain)
    torch.testing.assert_close(logits_of(plain), expected, rtol=1e-5, atol=1e-5)


def test_save_replaces_existing_dir_and_leaves_no_temp(tiny, tmp_path):
    model, tok = tiny
    out = tmp_path / "model"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    save_model(model, tok, out)
    assert not (out / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    torch.testing.assert_close(logits_of(AutoModelForCausalLM.from_pretrained(out)), logits_of(model))


def test_failed_save_keeps_previous_save(tiny, tmp_path, monkeypatch):
    model, tok = tiny
    out = save_model(model, tok, tmp_path / "model")
    before = sorted(p.name for p in out.iterdir())

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(tok, "save_pretrained", broken)
    with pytest.raises(OSError, match="disk full"):
        save_model(model, tok, out)
    assert sorted(p.name for p in out.iterdir()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_load_model_round_trips_a_saved_dir(tiny, tmp_path):
    model, tok = tiny
    out = save_model(model, tok, tmp_path / "m")
    loaded, loaded_tok = load_model(out)
    torch.testing.assert_close(logits_of(loaded), logits_of(model))
    assert loaded_tok.eos_token == "<|im_end|>" and loaded_tok.pad_token == "<|endoftext|>"
    assert loaded_tok.chat_template == tok.chat_template
    assert loaded.dtype == torch.float32


def test_load_model_tiny_follows_global_seed():
    torch.manual_seed(3)
    a, tok = load_model("tiny")
    torch.manual_seed(3)
    b, _ = load_model("tiny")
    assert torch.equal(a.model.embed_tokens.weight, b.model.embed_tokens.weight)
    assert a.config.vocab_size == len(tok)


def test_load_model_sets_missing_pad_token(tiny, tmp_path):
    model, tok = tiny
    tok.pad_token = None
    model.generation_config.pad_token_id = None
    model.config.pad_token_id = None
    out = save_model(model, tok, tmp_path / "nopad")
    _, loaded_tok = load_model(out)
    assert loaded_tok.pad_token == "<|endoftext|>"


@pytest.mark.parametrize(
    "name, message",
    [
        ("HuggingFaceTB/SmolLM2-135M-Instruct", "never downloads"),
        ("does/not/exist", "never downloads"),
    ],
)
def test_load_model_rejects_hub_names(name, message):
    with pytest.raises(ModelLoadError, match=message) as err:
        load_model(name)
    assert "'default'" in str(err.value) and ".gguf" in str(err.value)


def test_load_model_rejects_other_files_and_dirs(tmp_path):
    stray = tmp_path / "weights.bin"
    stray.write_bytes(b"")
    with pytest.raises(ModelLoadError, match="not a .gguf"):
        load_model(stray)
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(tmp_path)


def test_load_model_refuses_pickled_weights(tiny, tmp_path):
    model, tok = tiny
    out = save_model(model, tok, tmp_path / "m")
    (out / "model.safetensors").rename(out / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="safetensors"):
        load_model(out)
