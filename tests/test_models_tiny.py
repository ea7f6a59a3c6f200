"""The code-built byte tokenizer and the tiny random Llama."""

import torch

from tether.models.tiny import IM_END, IM_START, tiny_model, tiny_model_and_tokenizer, tiny_tokenizer


def test_token_ids_are_byte_values_then_specials():
    """With no merges, each UTF-8 byte is one token whose id is the byte's value;
    "é" is the two bytes 0xC3 0xA9 = 195, 169. Specials follow the 256 bytes in a fixed order."""
    tok = tiny_tokenizer()
    assert len(tok) == 259
    assert tok("Hi é\n").input_ids == [72, 105, 32, 195, 169, 10]
    assert tok.convert_tokens_to_ids(["<|endoftext|>", IM_START, IM_END]) == [256, 257, 258]
    assert (tok.eos_token, tok.eos_token_id) == (IM_END, 258)
    assert (tok.pad_token, tok.pad_token_id) == ("<|endoftext|>", 256)
    assert tok.bos_token is None


def test_text_round_trips_and_specials_stay_whole():
    tok = tiny_tokenizer()
    text = "  leading spaces, émoji 🙂 and\ttabs\n"
    assert tok.decode(tok(text).input_ids) == text
    ids = tok(f"{IM_START}user\nhi{IM_END}").input_ids
    assert ids[0] == 257 and ids[-1] == 258 and len(ids) == 1 + len("user\nhi") + 1


def test_chat_template_is_chatml():
    tok = tiny_tokenizer()
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    full = tok.apply_chat_template(messages + [{"role": "assistant", "content": "Yo"}], tokenize=False)
    assert full.startswith(text) and full.endswith("Yo<|im_end|>\n")


def test_tiny_model_matches_tokenizer_and_config():
    model, tok = tiny_model_and_tokenizer(hidden_size=32, num_layers=1, num_heads=2)
    assert model.config.vocab_size == len(tok)
    assert model.get_output_embeddings().weight.shape == (len(tok), 32)
    assert model.dtype == torch.float32
    assert model.config._attn_implementation == "sdpa"
    assert model.generation_config.eos_token_id == tok.eos_token_id
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight  # tied by default
    untied = tiny_model(hidden_size=32, num_layers=1, num_heads=2, tie_word_embeddings=False)
    assert untied.get_output_embeddings().weight is not untied.get_input_embeddings().weight


def test_seeding():
    """An int seed fixes the weights and leaves the global RNG untouched; seed=None follows the global RNG."""
    small = dict(hidden_size=16, num_layers=1, num_heads=2)
    a, b, c = tiny_model(seed=1, **small), tiny_model(seed=1, **small), tiny_model(seed=2, **small)
    wa, wb, wc = (m.model.embed_tokens.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)

    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    tiny_model(seed=5, **small)
    assert torch.equal(torch.rand(1), expected_next)

    torch.manual_seed(7)
    d = tiny_model(seed=None, **small)
    torch.manual_seed(7)
    e = tiny_model(seed=None, **small)
    assert torch.equal(d.model.embed_tokens.weight, e.model.embed_tokens.weight)


def test_tiny_model_runs_and_generates():
    model, tok = tiny_model_and_tokenizer()
    ids = tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True, return_tensors="pt", return_dict=True)
    logits = model(**ids).logits
    assert logits.shape == (1, ids["input_ids"].shape[1], len(tok))
    out = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert out.shape[1] <= ids["input_ids"].shape[1] + 4
