"""Backbone + chunked head log-probabilities against the model's own logits, padded and packed."""

from types import SimpleNamespace

import pytest
import torch

from tether.models import apply_lora, backbone_and_head, forward_hidden, forward_token_logprobs, tiny_model_and_tokenizer


def make_sequences(seed=0):
    gen = torch.Generator().manual_seed(seed)
    lengths, prompt_lens = [9, 3, 5, 6, 2, 7], [3, 1, 2, 4, 1, 1]
    seqs = [torch.randint(0, 256, (n,), generator=gen).tolist() for n in lengths]
    return seqs, prompt_lens


def padded_batch(seqs, prompt_lens, pad_id=0):
    """A padded TokenBatch built by hand: position t predicts token t+1, loss on completion targets."""
    rows, width = len(seqs), max(map(len, seqs))
    input_ids = torch.full((rows, width), pad_id)
    attention_mask = torch.zeros(rows, width, dtype=torch.long)
    target_ids = torch.zeros(rows, width, dtype=torch.long)
    loss_mask = torch.zeros(rows, width, dtype=torch.bool)
    for i, (seq, plen) in enumerate(zip(seqs, prompt_lens)):
        n = len(seq)
        input_ids[i, :n] = torch.tensor(seq)
        attention_mask[i, :n] = 1
        target_ids[i, : n - 1] = torch.tensor(seq[1:])
        loss_mask[i, plen - 1 : n - 1] = True
    position_ids = torch.arange(width).expand(rows, width).clone()
    return SimpleNamespace(input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask,
                           target_ids=target_ids, loss_mask=loss_mask)


def packed_batch(seqs, prompt_lens, rows_of):
    """Sequences laid end to end in the rows given by ``rows_of`` (lists of sequence indices), no mask."""
    width = max(sum(len(seqs[i]) for i in row) for row in rows_of)
    input_ids = torch.zeros(len(rows_of), width, dtype=torch.long)
    position_ids = torch.zeros(len(rows_of), width, dtype=torch.long)
    target_ids = torch.zeros(len(rows_of), width, dtype=torch.long)
    loss_mask = torch.zeros(len(rows_of), width, dtype=torch.bool)
    owner = torch.full((len(rows_of), width), -1)
    for r, row in enumerate(rows_of):
        start = 0
        for i in row:
            seq, n = seqs[i], len(seqs[i])
            input_ids[r, start : start + n] = torch.tensor(seq)
            position_ids[r, start : start + n] = torch.arange(n)
            target_ids[r, start : start + n - 1] = torch.tensor(seq[1:])
            loss_mask[r, start + prompt_lens[i] - 1 : start + n - 1] = True
            owner[r, start : start + n - 1] = i
            start += n
        position_ids[r, start:] = torch.arange(width - start) + (position_ids[r, start - 1] + 1 if start else 0)
    batch = SimpleNamespace(input_ids=input_ids, position_ids=position_ids, attention_mask=None,
                            target_ids=target_ids, loss_mask=loss_mask)
    return batch, owner


def per_sequence_sums(values, owner, loss_mask, n):
    return torch.zeros(n, dtype=values.dtype).index_add(0, owner[loss_mask], values[loss_mask])


@pytest.fixture
def model():
    return tiny_model_and_tokenizer(seed=0)[0]


def reference_logprobs(model, batch, temperature=1.0):
    """log_softmax of the model's own full logits, gathered at the targets, zero off the loss mask."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids).logits
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)  # [R, T, V]
    return logp.gather(-1, batch.target_ids.unsqueeze(-1)).squeeze(-1) * batch.loss_mask


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_padded_matches_model_logits(model, temperature):
    batch = padded_batch(*make_sequences())
    ours = forward_token_logprobs(model, batch, temperature=temperature, chunk_size=5)
    torch.testing.assert_close(ours, reference_logprobs(model, batch, temperature), rtol=1e-5, atol=1e-5)
    assert torch.all(ours[~batch.loss_mask] == 0)


def test_packed_equals_padded_per_sequence(model):
    """Packed rows (no mask, position ids restarting) give each sequence the same log-probs as padding it alone."""
    seqs, prompt_lens = make_sequences()
    padded = padded_batch(seqs, prompt_lens)
    packed, owner = packed_batch(seqs, prompt_lens, rows_of=[[0, 1], [2, 3, 4], [5]])
    n = len(seqs)
    pad_lp = forward_token_logprobs(model, padded)
    pack_lp = forward_token_logprobs(model, packed)
    pad_owner = torch.arange(n).unsqueeze(1).expand_as(padded.loss_mask)
    torch.testing.assert_close(
        per_sequence_sums(pack_lp, owner, packed.loss_mask, n), per_sequence_sums(pad_lp, pad_owner, padded.loss_mask, n),
        rtol=1e-5, atol=1e-5,
    )
    # Token by token, too: the packed row's tokens, in order, equal each padded row's loss tokens.
    for i in range(n):
        torch.testing.assert_close(pack_lp[packed.loss_mask & (owner == i)], pad_lp[i][padded.loss_mask[i]], rtol=1e-5, atol=1e-5)


def test_packing_without_position_restart_would_leak(model):
    """Guards the packed test: if position ids did not restart, sequences would see each other and differ."""
    seqs, prompt_lens = make_sequences()
    packed, owner = packed_batch(seqs, prompt_lens, rows_of=[[0, 1]])
    leaky = SimpleNamespace(**{**vars(packed), "position_ids": torch.arange(packed.input_ids.shape[1]).unsqueeze(0)})
    good = forward_token_logprobs(model, packed)[packed.loss_mask & (owner == 1)]
    bad = forward_token_logprobs(model, leaky)[packed.loss_mask & (owner == 1)]
    assert not torch.allclose(good, bad, atol=1e-4)


def test_gradients_match_model_logits(model):
    batch = padded_batch(*make_sequences(seed=1))
    forward_token_logprobs(model, batch, chunk_size=4).sum().backward()
    ours = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    reference_logprobs(model, batch).sum().backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(ours[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_entropy_matches_model_logits(model):
    batch = padded_batch(*make_sequences())
    _, entropy = forward_token_logprobs(model, batch, return_entropy=True)
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    logp = torch.log_softmax(logits, dim=-1)
    expected = -(logp.exp() * logp).sum(-1) * batch.loss_mask
    torch.testing.assert_close(entropy, expected.detach(), rtol=1e-5, atol=1e-5)


def test_peft_wrapped_model(model):
    """A LoRA-wrapped model: same numbers as the base at init (B = 0), gradients reach only adapters."""
    batch = padded_batch(*make_sequences())
    base_lp = forward_token_logprobs(model, batch).detach()
    peft_model = apply_lora(model, r=4, alpha=8)
    backbone, head = backbone_and_head(peft_model)
    assert head is peft_model.base_model.model.lm_head and isinstance(head, torch.nn.Linear)
    assert backbone is peft_model.base_model.model.model
    lp = forward_token_logprobs(peft_model, batch)
    torch.testing.assert_close(lp, base_lp)
    lp.sum().backward()
    grads = {n: p.grad for n, p in peft_model.named_parameters() if p.grad is not None}
    assert grads and all("lora_" in n for n in grads)
    assert any(float(g.abs().sum()) > 0 for n, g in grads.items() if "lora_B" in n)


def test_forward_hidden_is_the_last_hidden_state(model):
    batch = padded_batch(*make_sequences())
    hidden = forward_hidden(model, batch.input_ids, batch.position_ids, batch.attention_mask)
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, output_hidden_states=True)
    torch.testing.assert_close(hidden, out.hidden_states[-1])
    assert hidden.shape == (*batch.input_ids.shape, model.config.hidden_size)


@pytest.mark.parametrize("with_lora", [False, True])
def test_gradient_checkpointing_gives_the_same_gradients(with_lora):
    """Calling the backbone directly keeps activation checkpointing on (and exact)."""
    batch = padded_batch(*make_sequences(seed=2))

    def grads(checkpointing):
        model = tiny_model_and_tokenizer(seed=0)[0]
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if with_lora:
            torch.manual_seed(0)  # LoRA A is drawn from the global generator
            model = apply_lora(model, r=4, alpha=8)
            with torch.no_grad():  # nonzero B so LoRA A gets a gradient too
                for name, p in model.named_parameters():
                    if "lora_B" in name:
                        p.fill_(0.1)
        model.train()
        mlp = backbone_and_head(model)[0].layers[0].mlp
        calls, mlp_forward = [], mlp.forward

        def counting_forward(*args, **kwargs):  # not a forward hook: torch skips hooks while recomputing
            calls.append(1)
            return mlp_forward(*args, **kwargs)

        mlp.forward = counting_forward
        forward_token_logprobs(model, batch).sum().backward()
        assert len(calls) == (2 if checkpointing else 1)  # checkpointing reruns the layer in backward
        return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    plain, checkpointed = grads(False), grads(True)
    assert plain.keys() == checkpointed.keys() and plain
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-6, msg=name)
