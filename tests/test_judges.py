import pytest
import torch

from tether.feedback.judges import PairJudge, RewardJudge, both_orders
from tether.rollout.rewards import FunctionReward


def _length_source():
    return FunctionReward(lambda prompt, response: float(len(response)), name="length")


def test_reward_judge_hard_verdicts_and_ties():
    judge = RewardJudge(_length_source(), tie_margin=1.0)
    assert isinstance(judge, PairJudge)
    verdicts = judge(["p"] * 3, ["aaaa", "a", "aa"], ["a", "aaaa", "a"])
    # gaps 3, -3, 1: only |gap| > 1 is decided
    assert verdicts.tolist() == [1.0, 0.0, 0.5]


def test_reward_judge_bradley_terry_probability():
    judge = RewardJudge(_length_source(), temperature=2.0)
    p = judge(["p"], ["aaaa"], ["aa"])
    assert torch.allclose(p, torch.sigmoid(torch.tensor([1.0])))


def test_reward_judge_refuses_margin_with_temperature():
    with pytest.raises(ValueError, match="tie_margin"):
        RewardJudge(_length_source(), temperature=1.0, tie_margin=0.1)


def test_both_orders_cancels_position_bias_and_counts_disagreement():
    class FirstBiased:
        name = "biased"

        def __call__(self, prompts, first, second):
            # prefers the longer reply, plus 0.3 for whichever is shown first
            return torch.tensor([min(1.0, (0.5 if len(a) == len(b) else float(len(a) > len(b))) * 0.4 + 0.3 + 0.3) for a, b in zip(first, second)])

    out = both_orders(FirstBiased(), ["p", "p"], ["long reply", "x"], ["x", "long reply"])
    # forward [1.0, 0.6], swapped read back [1 - 0.6, 1 - 1.0] = [0.4, 0.0]
    assert torch.allclose(out.prob, torch.tensor([0.7, 0.3]))
    assert out.disagree.tolist() == [True, True]
