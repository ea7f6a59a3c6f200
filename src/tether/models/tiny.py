"""A tiny random model and a byte-level tokenizer built in code, for tests and smoke runs.

Nothing here touches the disk or a hub: the tokenizer is assembled from the `tokenizers`
library and the model from a `LlamaConfig`, so tests run in seconds anywhere. The
tokenizer speaks the same ChatML dialect as SmolLM2 (the default model), so code that
works on the tiny pair works on the real one.
"""

from __future__ import annotations

import torch

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
END_OF_TEXT = "<|endoftext|>"
SPECIAL_TOKENS = (END_OF_TEXT, IM_START, IM_END)

# ChatML as SmolLM2 renders it, minus SmolLM2's injected default system prompt: tiny
# sequences stay short, and a prompt renders exactly as given.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _byte_symbols() -> list[str]:
    """The printable character the byte-level pre-tokenizer uses for each byte 0..255, in byte order.

    Printable Latin-1 bytes stand for themselves; the rest (controls, space, 0x7F-0xA0, 0xAD)
    are shifted to code points 256, 257, ... in byte order. This is the byte-level BPE convention.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols, shifted = [], 0
    for byte in range(256):
        if byte in printable:
            symbols.append(chr(byte))
        else:
            symbols.append(chr(256 + shifted))
            shifted += 1
    return symbols


def tiny_tokenizer():
    """A byte-level tokenizer: 256 byte tokens (ids 0..255), then the three ChatML specials.

    No merges: every byte of text is one token, so any string round-trips and ids are
    predictable in tests (``"a"`` is one token; a multi-byte character is several).
    Ids: 256 ``<|endoftext|>`` (pad), 257 ``<|im_start|>``, 258 ``<|im_end|>`` (eos).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {symbol: byte for byte, symbol in enumerate(_byte_symbols())}  # token id == byte value
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.add_special_tokens(list(SPECIAL_TOKENS))  # ids 256, 257, 258 in this order
    # use_regex=False: with no merges the GPT-2 word split only costs time; add_prefix_space=False keeps
    # "Hi" and " Hi" distinct, as in SmolLM2.
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=None,
        eos_token=IM_END,
        pad_token=END_OF_TEXT,
        unk_token=None,
        additional_special_tokens=[IM_START],
        model_max_length=2048,
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    tokenizer.padding_side = "right"
    return tokenizer


def tiny_model(
    vocab_size: int | None = None,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    seed: int | None = 0,
    tie_word_embeddings: bool = True,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 2048,
):
    """A randomly initialised ``LlamaForCausalLM`` in float32 with SDPA attention.

    ``vocab_size`` defaults to ``len(tiny_tokenizer())``. ``seed=None`` draws the weights
    from torch's global generator (so a caller's own ``set_seed`` decides them); an int
    seeds a private generator state and restores the global one afterwards.
    """
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = tiny_tokenizer()
    if vocab_size is None:
        vocab_size = len(tokenizer)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        attn_implementation="sdpa",
        dtype="float32",
    )
    if seed is None:
        model = LlamaForCausalLM(config)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = LlamaForCausalLM(config)
    model = model.to(torch.float32)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None
    )
    return model


def tiny_model_and_tokenizer(**kwargs):
    """``(tiny_model(**kwargs), tiny_tokenizer())``: a matched pair."""
    return tiny_model(**kwargs), tiny_tokenizer()
