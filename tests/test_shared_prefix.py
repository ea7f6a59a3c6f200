"""Shared-prompt layout: one segment per pair/ranking gives the rewards and gradients of separate rows."""

import torch

from tether.data.batches import collate
from tether.data.shared_prefix import collate_shared_prefix
from tether.models import tiny_model_and_tokenizer
from tether.models.reward import RewardModel


def test_layout_by_hand():
    """A pair with prompt [5, 6] and completions [7, 8] / [9]: one segment [5 | 6, 7, 8 | 6, 9]
    (the prompt's last token opens each branch) with positions [0, 1, 2, 3, 1, 2]. The rejected
    branch attends to 5 and itself, not to the chosen branch. Targets: 6 -> 7, 7 -> 8 (chosen,
    sequence 0) and 6 -> 9 (rejected, sequence 1). Last tokens: chosen at 3, rejected at 5.
    A second example whose slots have different prompts ([1] + [2], [3] + [4]) is two separate
    2-token segments. With rows of 6 tokens the pair is a row of its own and the two 2-token
    segments share row 1 (positions 0, 1, 0, 1), so its last tokens are at flat 6 + 1 and 6 + 3."""
    pair = [([5, 6, 7, 8], 2), ([5, 6, 9], 2)]
    unshared = [([1, 2], 1), ([3, 4], 1)]
    batch = collate_shared_prefix([pair, unshared], pad_id=0, row_tokens=6)
    assert batch.input_ids.tolist() == [[5, 6, 7, 8, 6, 9], [1, 2, 3, 4, 0, 0]]
    assert batch.position_ids[0].tolist() == [0, 1, 2, 3, 1, 2]
    assert batch.position_ids[1, :4].tolist() == [0, 1, 0, 1]
    assert batch.last_index.tolist() == [3, 5, 7, 9]
    assert batch.target_ids[0].tolist() == [0, 7, 8, 0, 9, 0]
    assert batch.sequence_ids.tolist() == [[-1, 0, 0, -1, 1, -1], [2, -1, 3, -1, -1, -1]]
    assert batch.loss_tokens_per_sequence().tolist() == [2.0, 1.0, 1.0, 1.0]
    allowed = batch.attention_mask[:, 0] == 0  # [R, T, T]
    assert allowed[0, 5].tolist() == [True, False, False, False, True, True]
    assert allowed[0, 3].tolist() == [True, True, True, True, False, False]
    assert allowed[1, 2].tolist() == [False, False, True, False, False, False]  # a new segment sees only itself
    assert allowed[1, 4].tolist() == [False, False, False, False, True, False]  # a pad sees only itself (no NaN row)


def test_shared_prompt_rewards_and_gradients_equal_separate_rows():
    torch.manual_seed(0)
    backbone, tokenizer = tiny_model_and_tokenizer(seed=0)
    model = RewardModel(backbone, tokenizer)
    prompts = ["Say hi", "Name a colour please", "Count to three"]
    pair_texts = [("hi there", "no"), ("blue, or maybe a deep green", "red"), ("one two three", "three")]
    examples = [model.encode_pairs([p, p], list(texts)) for p, texts in zip(prompts, pair_texts)]
    examples.append(model.encode_pairs(["Rank these"] * 3, ["first and best", "second", "a third one"]))  # K = 3
    examples.append([(examples[0][0][0], examples[0][0][1]), (examples[1][1][0], examples[1][1][1])])  # different prompts

    def rewards_and_grads(batch):
        model.zero_grad()
        rewards = model(batch)  # [S, 1]
        (rewards.squeeze(1) * torch.arange(1.0, rewards.shape[0] + 1)).sum().backward()
        return rewards.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    separate, grads_separate = rewards_and_grads(collate(examples, tokenizer.pad_token_id))
    for row_tokens in (16, 64, 512):  # many rows, a few, one
        shared, grads_shared = rewards_and_grads(collate_shared_prefix(examples, tokenizer.pad_token_id, row_tokens))
        torch.testing.assert_close(shared, separate, atol=1e-5, rtol=1e-5)
        assert grads_shared.keys() == grads_separate.keys()
        for name, grad in grads_separate.items():
            torch.testing.assert_close(grads_shared[name], grad, atol=1e-5, rtol=1e-4, msg=name)
    # Fewer tokens than the separate rows hold, as promised.
    packed = collate_shared_prefix(examples, tokenizer.pad_token_id, 512)
    assert packed.input_ids.numel() < sum(len(ids) for e in examples for ids, _ in e)


def test_reward_objective_loss_is_the_same_in_every_layout():
    """Bradley–Terry with margins and centring, and Plackett–Luce on rankings of 3 and 2 (masked):
    padded, packed and shared-prompt batches give one loss."""
    from tether.trainers.offline import Example
    from tether.data.layouts import Layout
    from tether.trainers.rm import RewardLoss, RewardObjective

    torch.manual_seed(0)
    backbone, tokenizer = tiny_model_and_tokenizer(seed=1)
    model = RewardModel(backbone, tokenizer)
    pairs = [Example(model.encode_pairs([p, p], [a, b]), {"margin": m}) for p, a, b, m in [("Hi", "hello there", "go away", 0.5), ("2+2?", "4", "5, I think", 0.0)]]
    rankings = [Example(model.encode_pairs(["Rank"] * 3, ["best one", "middle", "worst of all"])), Example(model.encode_pairs(["Pick"] * 2, ["this", "that one"]))]
    for kind, examples in ((RewardLoss.BRADLEY_TERRY, pairs), (RewardLoss.PLACKETT_LUCE, rankings)):
        losses = {layout: RewardObjective(kind, tokenizer.pad_token_id, centering_coef=0.1, layout=layout, row_tokens=64).loss(model, examples)[0] for layout in Layout}
        for layout, loss in losses.items():
            torch.testing.assert_close(loss, losses[Layout.PADDED], atol=1e-5, rtol=1e-5, msg=str(layout))
