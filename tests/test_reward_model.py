"""RewardModel: the head reads each sequence's last real token in every layout; weights; save/reload."""

import pytest
import torch

from tether.data.batches import collate
from tether.models import apply_lora, tiny_model_and_tokenizer
from tether.models.reward import RewardModel, last_token_index, last_token_index_from_mask

PROMPTS = ["Say hi", "Name a colour please", "Count to three"]
RESPONSES = ["hi", "blue, or maybe a deep green", "one two three"]


def _model(objectives=("reward",), seed=0):
    backbone, tokenizer = tiny_model_and_tokenizer(seed=seed)
    torch.manual_seed(seed)
    return RewardModel(backbone, tokenizer, objectives).eval()


def test_last_token_index_by_hand():
    """Sequences of 3 and 5 tokens, right-padded to width 5: last tokens at flat 0*5+2 = 2 and 1*5+4 = 9.
    Packed, rows are no wider than the longest sequence (5): the 5-token one is row 0, the 3-token
    one row 1 (flat 5..7): 4 and 7."""
    seqs = [([1, 2, 3], 1), ([4, 5, 6, 7, 8], 2)]
    padded = collate([seqs], pad_id=0)
    assert last_token_index(padded).tolist() == [2, 9]
    packed = collate([seqs], pad_id=0, pack=True, row_tokens=8)
    assert last_token_index(packed).tolist() == [7, 4]
    left = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
    assert last_token_index_from_mask(left).tolist() == [4, 4, 1]


def test_padded_packed_left_padded_and_single_agree():
    model = _model()
    seqs = model.encode_pairs(PROMPTS, RESPONSES)
    alone = torch.cat([model(collate([[s]], 0)) for s in seqs])  # [3, 1], no padding at all
    padded = model(collate([[s] for s in seqs], 0))
    packed = model(collate([[s] for s in seqs], 0, pack=True, row_tokens=256))
    width = max(len(ids) for ids, _ in seqs)
    pad = model.tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (width - len(s)) + s for s, _ in seqs])  # left padding, as generation leaves it
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s, _ in seqs])
    left = model.forward_padded(ids, mask)
    right_ids = torch.tensor([s + [pad] * (width - len(s)) for s, _ in seqs])
    right = model.forward_padded(right_ids, mask.flip(1))
    for other in (padded, packed, left, right):
        torch.testing.assert_close(other, alone, atol=1e-5, rtol=1e-5)
    # The padding really was read past: reading the pad column instead gives other numbers.
    assert not torch.allclose(model.head(model._hidden(right_ids, None, None)[:, -1]), alone, atol=1e-4)


def test_score_follows_input_order_and_batch_size():
    model = _model()
    a = model.score(PROMPTS, RESPONSES, batch_size=1)
    b = model.score(PROMPTS, RESPONSES, batch_size=2)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    swapped = model.score(PROMPTS[::-1], RESPONSES[::-1])
    torch.testing.assert_close(swapped, a.flip(0), atol=1e-5, rtol=1e-5)


def test_objective_weights_chosen_at_scoring_time():
    model = _model(("helpful", "harmless"))
    per_head = model.score_all(PROMPTS, RESPONSES)  # [3, 2]
    torch.testing.assert_close(model.score(PROMPTS, RESPONSES, weights={"helpful": 1.0}), per_head[:, 0])
    torch.testing.assert_close(model.score(PROMPTS, RESPONSES, weights={"helpful": 0.5, "harmless": 2.0}), 0.5 * per_head[:, 0] + 2.0 * per_head[:, 1])
    torch.testing.assert_close(model.score(PROMPTS, RESPONSES), per_head.mean(1))  # default: equal weights
    with pytest.raises(KeyError, match="honest"):
        model.score(PROMPTS, RESPONSES, weights={"honest": 1.0})


@pytest.mark.parametrize("lora", [False, True])
def test_save_and_reload_give_same_scores(tmp_path, lora):
    model = _model(("helpful", "harmless"))
    if lora:
        model.backbone = apply_lora(model.backbone, r=4, alpha=8)
        with torch.no_grad():  # make the adapters do something, so merging matters
            for name, p in model.backbone.named_parameters():
                if "lora_B" in name:
                    p.normal_(std=0.1)
    before = model.score_all(PROMPTS, RESPONSES)
    model.save_pretrained(tmp_path / "rm")
    reloaded = RewardModel.from_pretrained(tmp_path / "rm")
    assert reloaded.objectives == ["helpful", "harmless"]
    torch.testing.assert_close(reloaded.score_all(PROMPTS, RESPONSES), before, atol=1e-5, rtol=1e-5)

    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(tmp_path / "rm")  # the backbone is a plain HF directory


def test_mean_pooling_reads_the_response_tokens_in_every_layout(tmp_path):
    """pooling="mean": head(mean of the final hidden states at the response's tokens), computed by
    hand from one unpadded forward per sequence, and the same from padded, packed and shared-prompt
    batches; the choice survives save and reload."""
    from tether.data.shared_prefix import collate_shared_prefix

    model = _model()
    model.pooling = "mean"
    seqs = model.encode_pairs(PROMPTS, RESPONSES)
    by_hand = []
    for ids, prompt_len in seqs:
        hidden = model._hidden(torch.tensor([ids]), None, None)[0]  # [T, H]
        by_hand.append(model.head(hidden[prompt_len:].mean(0)))  # [O]: response tokens only
    by_hand = torch.stack(by_hand)  # [3, O]
    pair = model.encode_pairs(["Say hi", "Say hi"], ["hi", "hello to you"])
    pair_by_hand = torch.stack([model.head(model._hidden(torch.tensor([ids]), None, None)[0][plen:].mean(0)) for ids, plen in pair])
    with torch.no_grad():
        torch.testing.assert_close(model(collate([[s] for s in seqs], 0)), by_hand, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model(collate([[s] for s in seqs], 0, pack=True, row_tokens=256)), by_hand, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model(collate_shared_prefix([pair], model.tokenizer.pad_token_id)), pair_by_hand, atol=1e-5, rtol=1e-5)
        last = RewardModel(model.backbone, model.tokenizer, head=model.head)(collate([[s] for s in seqs], 0))
    assert not torch.allclose(last, by_hand, atol=1e-4)  # the two poolings really differ
    with pytest.raises(ValueError, match="last token"):
        model.forward_padded(torch.tensor([seqs[0][0]]), torch.ones(1, len(seqs[0][0]), dtype=torch.long))
    model.save_pretrained(tmp_path / "rm")
    reloaded = RewardModel.from_pretrained(tmp_path / "rm")
    assert reloaded.pooling == "mean"
    torch.testing.assert_close(reloaded.score(PROMPTS, RESPONSES), by_hand.squeeze(1).detach(), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="pooling"):
        RewardModel(model.backbone, model.tokenizer, pooling="max")
