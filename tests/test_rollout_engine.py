"""The rollout engine: log-probs agree with the training forward pass, stopping and padding,
filters, reproducibility, and the static Llama decoder against the model-agnostic one."""

import math

import pytest
import torch

from tether.data.batches import collate
from tether.models import apply_lora, forward_token_logprobs, tiny_model_and_tokenizer
from tether.rollout.engine import (
    DecodePath,
    Rollout,
    Sampler,
    SamplingParams,
    encode_prompts,
    generate,
    left_pad,
    resolve_path,
    stop_token_ids,
    top_k_filter_,
    top_p_filter_,
)

PROMPTS = ["hi", "tell me a story about a fox", "x", [{"role": "system", "content": "be brief"}, {"role": "user", "content": "ok?"}]]


@pytest.fixture(scope="module")
def pair():
    torch.set_num_threads(1)
    model, tokenizer = tiny_model_and_tokenizer()
    return model.eval(), tokenizer


def run(model, tokenizer, seed=0, path="auto", prompts=PROMPTS, **params):
    prompt_ids = encode_prompts(tokenizer, prompts)
    return generate(model, tokenizer, prompt_ids, SamplingParams(**params), torch.Generator().manual_seed(seed), path=path)


def engine_vs_forward(model, tokenizer, rollout, temperature, pack):
    batch = collate([rollout.sequences()], tokenizer.pad_token_id, pack=pack)
    reference = forward_token_logprobs(model, batch, temperature=temperature).detach()  # [R, T]
    # Per sequence, the loss-masked positions in order are exactly the response tokens in order.
    expected = [reference[batch.loss_mask & (batch.sequence_ids == i)] for i in range(batch.num_sequences)]
    got = [rollout.logprobs[i][rollout.response_mask[i]] for i in range(len(rollout.prompt_ids))]
    return expected, got


@pytest.mark.parametrize("path", ["hf", "llama_static"])
@pytest.mark.parametrize("pack", [False, True])
@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.7, 20, 0.9)])
def test_logprobs_match_training_forward(pair, path, pack, temperature, top_k, top_p):
    """The engine's log-probs (unfiltered tempered distribution) equal the training pass on the
    collated sequences, padded and packed, for prompts of different lengths (left padding)."""
    model, tokenizer = pair
    rollout = run(model, tokenizer, path=path, max_new_tokens=24, temperature=temperature, top_k=top_k, top_p=top_p)
    assert len({len(p) for p in rollout.prompt_ids}) > 1  # left padding is exercised
    expected, got = engine_vs_forward(model, tokenizer, rollout, temperature, pack)
    for e, g in zip(expected, got):
        assert e.shape == g.shape and e.numel() > 0
        torch.testing.assert_close(g, e, atol=1e-5, rtol=0)
    assert (rollout.logprobs[~rollout.response_mask] == 0).all()
    assert (rollout.logprobs[rollout.response_mask] <= 0).all()


@pytest.mark.parametrize("onednn", [True, False])
def test_static_decoder_matches_fallback(pair, monkeypatch, onednn):
    """Same seed, same tokens and (to float rounding) same log-probs on both decode paths, with
    the weights packed for oneDNN (the CPU default) and used as given (GPUs, builds without it)."""
    from tether.rollout import llama_decoder

    if onednn and not llama_decoder._onednn_linear_available():
        pytest.skip("this torch build has no oneDNN linear")
    monkeypatch.setattr(llama_decoder, "_onednn_linear_available", lambda: onednn)
    decoder = llama_decoder.LlamaStaticDecoder(pair[0], batch_size=2, max_length=8)
    assert decoder.logits_of.packed is onednn and decoder.fused[0].qkv.packed is onednn
    model, tokenizer = pair
    assert resolve_path(model) is DecodePath.LLAMA_STATIC
    fast = run(model, tokenizer, path="llama_static", max_new_tokens=30, temperature=0.8)
    slow = run(model, tokenizer, path="hf", max_new_tokens=30, temperature=0.8)
    assert torch.equal(fast.response_ids, slow.response_ids)
    assert torch.equal(fast.response_mask, slow.response_mask)
    torch.testing.assert_close(fast.logprobs, slow.logprobs, atol=1e-5, rtol=0)


def test_static_decoder_with_lora_matches_fallback(pair):
    """LoRA-wrapped projections fold their adapters into the stacked weights, so a PEFT policy takes the fast path too."""
    model, tokenizer = tiny_model_and_tokenizer(seed=1)
    peft_model = apply_lora(model, r=4, alpha=8, dropout=0.0)
    with torch.no_grad():  # non-zero B so the adapters change the outputs
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    peft_model.eval()
    assert resolve_path(peft_model) is DecodePath.LLAMA_STATIC
    fast = run(peft_model, tokenizer, path="llama_static", max_new_tokens=12)
    slow = run(peft_model, tokenizer, path="hf", max_new_tokens=12)
    assert torch.equal(fast.response_ids, slow.response_ids)
    torch.testing.assert_close(fast.logprobs, slow.logprobs, atol=1e-5, rtol=0)


def test_lora_projections_fold_as_base_plus_scaled_product_like_the_probe():
    """The LoRA fold W + (alpha/r)·B@A (peft's merge sum) equals folding the wrapped layer by probing
    it with an identity matrix, the generic path, adapters on; with the adapters off it is W itself."""
    from tether.models import disabled_adapter
    from tether.rollout import llama_decoder

    model, _ = tiny_model_and_tokenizer(seed=2)
    peft_model = apply_lora(model, r=4, alpha=8, dropout=0.0)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    layer = peft_model.base_model.model.model.layers[0]
    for proj in (layer.self_attn.q_proj, layer.mlp.down_proj):
        weight, bias = llama_decoder._lora_affine(proj)
        a, b = proj.lora_A["default"].weight, proj.lora_B["default"].weight  # [r, in], [out, r]
        torch.testing.assert_close(weight, proj.base_layer.weight + 2.0 * b @ a, rtol=0, atol=1e-6)  # alpha / r = 2
        probe = torch.eye(proj.in_features)  # [in, in]
        torch.testing.assert_close(weight, proj(probe).t(), rtol=0, atol=1e-5)
        assert bias is None
    with disabled_adapter(peft_model):
        weight, _ = llama_decoder._lora_affine(layer.mlp.down_proj)
        assert weight is layer.mlp.down_proj.base_layer.weight


def test_non_llama_model_takes_fallback():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(vocab_size=259, n_embd=32, n_layer=1, n_head=2, n_positions=128)).eval()
    _, tokenizer = tiny_model_and_tokenizer()
    assert resolve_path(model) is DecodePath.HF
    rollout = run(model, tokenizer, max_new_tokens=6)
    expected, got = engine_vs_forward(model, tokenizer, rollout, 1.0, pack=False)
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, atol=1e-5, rtol=0)


def test_eos_stops_row_and_pads(pair):
    """A row stops at the first eos: mask True up to and including it, pad (with zero log-prob) after,
    finished True; rows that never emit eos run to max_new_tokens with finished False."""
    model, tokenizer = pair
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    prompts = [[{"role": "user", "content": "a" * n}] for n in (1, 4, 9, 2, 6, 3, 5, 7)]
    found_stop = False
    for seed in range(6):
        rollout = run(model, tokenizer, seed=seed, prompts=prompts, max_new_tokens=40, temperature=3.0)  # hot: eos gets drawn
        ids, mask = rollout.response_ids, rollout.response_mask
        for row in range(ids.shape[0]):
            n = int(mask[row].sum())
            assert mask[row, :n].all() and not mask[row, n:].any()  # contiguous prefix
            eos_at = (ids[row, :n] == eos).nonzero().flatten().tolist()
            if rollout.finished[row]:
                found_stop = True
                assert eos_at == [n - 1]  # exactly one eos, the last generated token
                assert (ids[row, n:] == tokenizer.pad_token_id).all()
                assert (rollout.logprobs[row, n:] == 0).all()
            else:
                assert eos_at == [] and n == ids.shape[1] == 40
        assert [s[0][s[1]:] for s in rollout.sequences()] == [ids[r, : int(mask[r].sum())].tolist() for r in range(ids.shape[0])]
    assert found_stop


def test_loop_ends_when_all_rows_stop():
    """With eos certain at every step, every row stops after one token and the loop ends there:
    the rollout is one token wide, all finished, log-prob log(1 / (1 + (V-1) e^-100)) = 0."""
    model, tokenizer = tiny_model_and_tokenizer(tie_word_embeddings=False)
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    # A zero head weight and a bias of 100 on eos: every logit is 0 except eos's, whatever the input.
    model.lm_head.bias = torch.nn.Parameter(torch.zeros(len(tokenizer)))
    with torch.no_grad():
        model.lm_head.weight.zero_()
        model.lm_head.bias[eos] = 100.0
    for path in ("hf", "llama_static"):
        rollout = run(model, tokenizer, path=path, max_new_tokens=10)
        assert rollout.response_ids.shape == (len(PROMPTS), 1)
        assert (rollout.response_ids[:, 0] == eos).all() and rollout.finished.all() and rollout.response_mask.all()
        assert rollout.texts == [""] * len(PROMPTS)  # special tokens skipped
        torch.testing.assert_close(rollout.logprobs[:, 0], torch.zeros(len(PROMPTS)), atol=1e-6, rtol=0)


def test_stop_at_eos_off_runs_full_length(pair):
    model, tokenizer = pair
    rollout = run(model, tokenizer, max_new_tokens=17, temperature=3.0, stop_at_eos=False)
    assert rollout.response_ids.shape == (len(PROMPTS), 17) and rollout.response_mask.all() and not rollout.finished.any()


def test_top_k_one_is_greedy(pair):
    """top_k=1 leaves one candidate: every token is the argmax of the model's logits given the
    prefix (checked by a plain full forward pass per step)."""
    model, tokenizer = pair
    rollout = run(model, tokenizer, max_new_tokens=10, top_k=1, stop_at_eos=False)
    for row, (seq, plen) in enumerate(rollout.sequences()):
        ids = torch.tensor(seq)[None]
        logits = model(input_ids=ids).logits[0]  # [n, V]
        greedy = logits[plen - 1 : -1].argmax(-1)
        assert torch.equal(greedy, torch.tensor(seq[plen:]))


def test_same_generator_seed_same_rollout(pair):
    model, tokenizer = pair
    a = run(model, tokenizer, seed=3, max_new_tokens=16, top_p=0.9)
    b = run(model, tokenizer, seed=3, max_new_tokens=16, top_p=0.9)
    c = run(model, tokenizer, seed=4, max_new_tokens=16, top_p=0.9)
    assert torch.equal(a.response_ids, b.response_ids) and torch.equal(a.logprobs, b.logprobs) and a.texts == b.texts
    assert not torch.equal(a.response_ids, c.response_ids)


def test_top_k_filter_by_hand():
    logits = torch.tensor([[1.0, 4.0, 3.0, 2.0], [0.0, 0.0, 5.0, -1.0]])
    out = top_k_filter_(logits.clone(), 2)
    inf = float("-inf")
    assert torch.equal(out, torch.tensor([[inf, 4.0, 3.0, inf], [0.0, 0.0, 5.0, inf]]))  # ties at the 2nd kept
    assert torch.equal(top_k_filter_(logits.clone(), 0), logits)


def test_top_p_keeps_smallest_set_reaching_p():
    """Probabilities [0.5, 0.3, 0.15, 0.05] (logits = log p, order shuffled).
    p=0.8: 0.5 < 0.8, 0.5+0.3 = 0.8 >= 0.8 -> keep {0.5, 0.3}.
    p=0.81: needs 0.15 too -> keep three. p=0.5: the top token alone reaches it -> keep one.
    p=0.1: still the top token (the most likely is always kept)."""
    probs = torch.tensor([0.15, 0.5, 0.05, 0.3])
    logits = probs.log()[None]
    kept = lambda p: torch.isfinite(top_p_filter_(logits.clone(), p))[0].tolist()  # noqa: E731
    assert kept(0.8) == [False, True, False, True]
    assert kept(0.81) == [True, True, False, True]
    assert kept(0.5) == [False, True, False, False]
    assert kept(0.1) == [False, True, False, False]
    assert kept(1.0) == [True] * 4


def test_sampler_logprob_is_unfiltered_and_frequencies_follow_filtered():
    """Logits log([0.5, 0.3, 0.15, 0.05]) with top_p=0.8: draws only tokens 0 and 1, at frequencies
    0.5/0.8 = 0.625 and 0.375; the reported log-prob is still log 0.5 / log 0.3 (unfiltered)."""
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    sampler = Sampler(SamplingParams(top_p=0.8), torch.Generator().manual_seed(0))
    tokens, logprobs = sampler(probs.log().expand(20000, 4).clone())
    assert set(tokens.tolist()) == {0, 1}
    assert abs((tokens == 0).float().mean().item() - 0.625) < 0.015
    torch.testing.assert_close(logprobs, probs.log()[tokens], atol=1e-6, rtol=0)


def test_sampler_temperature_logprob():
    """Temperature 2 on logits [2, 0]: tempered logits [1, 0], log-prob of token 0 = 1 - log(e + 1)."""
    sampler = Sampler(SamplingParams(temperature=2.0, top_k=1), None)
    tokens, logprobs = sampler(torch.tensor([[2.0, 0.0]]))
    assert tokens.tolist() == [0]
    assert abs(logprobs.item() - (1 - math.log(math.e + 1))) < 1e-6


def test_left_pad_and_encode_prompts(pair):
    _, tokenizer = pair
    ids, mask, pos = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert pos[0].tolist() == [0, 1, 2] and pos[1, 2].item() == 0
    text = tokenizer.decode(encode_prompts(tokenizer, ["hey"])[0])
    assert text == "<|im_start|>user\nhey<|im_end|>\n<|im_start|>assistant\n"
    assert stop_token_ids(tokenizer) == [tokenizer.convert_tokens_to_ids("<|im_end|>")]


def test_rollout_sequences_format():
    rollout = Rollout(
        prompt_ids=[[1, 2], [3]],
        response_ids=torch.tensor([[4, 5, 0], [6, 0, 0]]),
        response_mask=torch.tensor([[True, True, False], [True, False, False]]),
        logprobs=torch.zeros(2, 3),
        texts=["", ""],
        finished=torch.tensor([True, True]),
    )
    assert rollout.sequences() == [([1, 2, 4, 5], 2), ([3, 6], 1)]
