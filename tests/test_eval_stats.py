"""Pure statistics of `tether eval`: bootstrap coverage, length control, tie rules, distinct-n."""

from __future__ import annotations

import math

import pytest
import torch

from tether.evaluate.stats import (
    bootstrap_counts,
    distinct_n,
    mean_std_stderr,
    percentile_interval,
    row_weights,
    weighted_mean,
)
from tether.evaluate.winrate import (
    fit_length_logistic,
    hard_verdict,
    judge_pairs,
    length_controlled,
    win_rate_report,
)
from tether.feedback.judges import RewardJudge, load_judge
from tether.rollout.rewards import FunctionReward

torch.set_num_threads(1)


# ---- bootstrap ---------------------------------------------------------------------------------


def test_bootstrap_counts_draw_every_prompt_slot_and_rows_follow_their_prompt():
    counts = bootstrap_counts(5, 7, seed=3)
    assert counts.shape == (7, 5)
    assert torch.equal(counts.sum(1), torch.full((7,), 5.0, dtype=torch.float64))
    index = torch.tensor([0, 0, 1, 1, 4])  # two samples of prompt 0 and 1, one of prompt 4
    w = row_weights(counts, index)
    assert torch.equal(w[:, 0], w[:, 1]) and torch.equal(w[:, 2], w[:, 3]) and torch.equal(w[:, 4], counts[:, 4])


def test_weighted_mean_and_percentile_hand_values():
    """values [1, 2, 3], weights [2, 1, 0] -> (2 + 2) / 3; quantiles of 0..100 at 5% and 95% are 5 and 95."""
    assert torch.allclose(weighted_mean(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([[2.0, 1.0, 0.0]], dtype=torch.float64)), torch.tensor([4 / 3], dtype=torch.float64))
    assert percentile_interval(torch.arange(101.0), 0.9) == pytest.approx((5.0, 95.0))


def _synthetic_experiment(generator, prompts=40, samples=2, truth=0.6):
    """Verdicts with a known expected win-rate ``truth``: each prompt has its own win probability
    q ~ Beta(6·truth, 6·(1 − truth)) (mean ``truth``), so samples of one prompt are correlated, and
    each sample is a win with probability 0.8·q, a tie with probability 0.2 (a half) and a loss
    otherwise: E[verdict] = 0.8·truth + 0.1 = 0.58 for truth 0.6."""
    q = _beta_from_uniform(torch.rand(prompts, generator=generator), 6 * truth, 6 * (1 - truth))  # [P]
    q = q.repeat_interleave(samples)  # [N]
    r = torch.rand(prompts * samples, generator=generator)  # [N]
    verdict = torch.where(r < 0.8 * q, 1.0, torch.where(r < 0.8 * q + 0.2, 0.5, 0.0))
    lengths = torch.randint(5, 40, (2, prompts * samples), generator=generator).double()  # unrelated to the verdicts
    return verdict, lengths[0], lengths[1], torch.arange(prompts).repeat_interleave(samples)


def _beta_from_uniform(u, a, b, grid=4001):
    """Inverse CDF of Beta(a, b) by a numeric table (deterministic given u)."""
    x = torch.linspace(1e-6, 1 - 1e-6, grid, dtype=torch.float64)
    pdf = x ** (a - 1) * (1 - x) ** (b - 1)
    cdf = torch.cumsum(pdf, 0)
    cdf = cdf / cdf[-1]
    return x[torch.searchsorted(cdf, u.double().clamp(0, 1)).clamp(max=grid - 1)]


def test_bootstrap_interval_covers_a_known_win_rate_about_as_often_as_promised():
    """200 repetitions of a 40-prompt experiment whose expected verdict is 0.8·0.6 + 0.1 = 0.58: the
    90% percentile interval (raw and length-controlled: lengths are unrelated to the verdicts, so
    the length slope is 0 in the population and σ(a) estimates the same 0.58) covers 0.58 in
    0.82–0.97 of them."""
    truth = 0.8 * 0.6 + 0.1
    generator = torch.Generator().manual_seed(1234)
    covered_raw = covered_lc = 0
    repetitions = 200
    for rep in range(repetitions):
        verdict, lp, lr, index = _synthetic_experiment(generator)
        report = win_rate_report(verdict, lp, lr, index, rounds=200, confidence=0.9, seed=rep)
        covered_raw += report["win_rate_ci"][0] <= truth <= report["win_rate_ci"][1]
        covered_lc += report["lc_win_rate_ci"][0] <= truth <= report["lc_win_rate_ci"][1]
    assert 0.82 <= covered_raw / repetitions <= 0.97, covered_raw
    assert 0.82 <= covered_lc / repetitions <= 0.97, covered_lc


# ---- length control ----------------------------------------------------------------------------


class _NoisyLengthJudge:
    """Bradley–Terry on word counts, sampled: the first reply wins with probability
    σ((words_first − words_second) / 4), drawn from a seeded generator (so a verdict is 1 or 0).
    Asked once (``order_invariant``), like a human rater who only looks at length."""

    name = "noisy_length"
    order_invariant = True

    def __init__(self, seed: int):
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, prompts, first, second):
        gap = torch.tensor([len(a.split()) - len(b.split()) for a, b in zip(first, second)], dtype=torch.float64)
        return (torch.rand(len(first), generator=self.generator, dtype=torch.float64) < torch.sigmoid(gap / 4)).double()


@pytest.mark.parametrize("judge_kind", ["longer_wins", "noisy_length"])
def test_length_control_removes_a_pure_length_advantage(judge_kind):
    """The policy's answers are the reference's kind of answers plus 8 words; the judge prefers the
    longer reply (deterministically, a RewardJudge on word count; or noisily). The raw win-rate is
    far above 1/2 (the policy is usually longer), but at equal length the judge has no preference:
    the length-controlled win-rate is near 1/2, and its 90% interval contains 1/2."""
    g = torch.Generator().manual_seed(0)
    n = 120
    ref_words = torch.randint(5, 30, (n,), generator=g)
    pol_words = torch.randint(5, 30, (n,), generator=g) + 8  # only longer
    policy = [" ".join(["good"] * int(k)) for k in pol_words]
    reference = [" ".join(["good"] * int(k)) for k in ref_words]
    if judge_kind == "longer_wins":
        judge = RewardJudge(FunctionReward(lambda p, r: float(len(r.split())), name="words"))
    else:
        judge = _NoisyLengthJudge(seed=1)
    judged = judge_pairs(judge, ["p"] * n, policy, reference)
    report = win_rate_report(judged["verdict"], pol_words.double(), ref_words.double(), torch.arange(n), rounds=200, confidence=0.9)
    assert report["win_rate"] > 0.7
    assert abs(report["lc_win_rate"] - 0.5) < 0.05, report
    assert report["lc_win_rate_ci"][0] < 0.5 < report["lc_win_rate_ci"][1], report
    assert report["lc_length_slope"] > 1.0


def test_length_control_keeps_an_advantage_that_is_not_length():
    """Verdicts drawn independently of the lengths (a win with probability 0.7): the fitted slope is
    small and σ(a) stays near the raw win-rate."""
    g = torch.Generator().manual_seed(5)
    n = 400
    verdict = (torch.rand(n, generator=g) < 0.7).double()
    delta = torch.randint(-20, 21, (n,), generator=g).double()
    lc, slope = length_controlled(verdict, delta, torch.ones(1, n, dtype=torch.float64))
    assert abs(float(lc[0]) - float(verdict.mean())) < 0.02
    assert abs(float(slope[0])) < 0.5


def test_length_control_without_a_length_signal_is_the_raw_win_rate():
    """All length differences equal (sd 0): the feature is 0 and σ(a) equals the raw win-rate exactly,
    since the intercept-only maximum-likelihood fit of soft targets is logit(mean)."""
    verdict = torch.tensor([1.0, 1.0, 0.5, 0.0, 1.0, 1.0, 0.5, 1.0], dtype=torch.float64)
    same = torch.full((8,), 3.0, dtype=torch.float64)
    lc, _ = length_controlled(verdict, same, torch.ones(1, 8, dtype=torch.float64))
    assert float(lc[0]) == pytest.approx(float(verdict.mean()), abs=1e-9)


def test_logistic_fit_matches_hand_solution():
    """Two groups x = −1 and x = +1 with mean targets 0.25 and 0.75, no ridge: the MLE solves
    σ(a − b) = 0.25 and σ(a + b) = 0.75, so a = 0 and b = logit(0.75) = ln 3."""
    x = torch.tensor([[-1.0, -1.0, 1.0, 1.0]], dtype=torch.float64)
    y = torch.tensor([0.5, 0.0, 1.0, 0.5], dtype=torch.float64)
    a, b = fit_length_logistic(x, y, torch.ones(1, 4, dtype=torch.float64), l2=0.0)
    assert float(a[0]) == pytest.approx(0.0, abs=1e-8)
    assert float(b[0]) == pytest.approx(math.log(3.0), abs=1e-8)


# ---- verdicts ----------------------------------------------------------------------------------


def test_hard_verdicts_count_ties_as_halves():
    verdict = hard_verdict(torch.tensor([0.9, 0.5, 0.2, 0.5]))
    assert verdict.tolist() == [1.0, 0.5, 0.0, 0.5]
    report = win_rate_report(verdict, torch.ones(4), torch.ones(4), torch.arange(4), rounds=0)
    assert report["win_rate"] == pytest.approx(0.5)  # (1 + 0.5 + 0 + 0.5) / 4
    assert (report["wins"], report["ties"], report["losses"]) == (1, 2, 1)


class _PositionBiased:
    """A model judge: prefers the longer reply, but with equal lengths always picks the first shown.
    Not order-invariant, so it is asked in both orders."""

    name = "biased"

    def __call__(self, prompts, first, second):
        return torch.tensor([0.9 if len(a) > len(b) else 0.1 if len(a) < len(b) else 0.8 for a, b in zip(first, second)])


def test_model_judge_asked_in_both_orders_and_disagreement_is_a_tie():
    """Pairs: (long, x) -> 0.9 forward, 1 − 0.1 = 0.9 swapped: a win. (x, long) -> a loss.
    (ab, cd) -> 0.8 forward, 1 − 0.8 = 0.2 swapped: the orders disagree, a tie.
    Win-rate (1 + 0 + 0.5) / 3 = 0.5, disagreement 1/3."""
    judged = judge_pairs(_PositionBiased(), ["p"] * 3, ["long", "x", "ab"], ["x", "long", "cd"])
    assert judged["verdict"].tolist() == [1.0, 0.0, 0.5]
    assert judged["disagree"].tolist() == [False, False, True]
    report = win_rate_report(judged["verdict"], torch.ones(3), torch.ones(3), torch.arange(3), rounds=0, prob=judged["prob"], disagree=judged["disagree"])
    assert report["win_rate"] == pytest.approx(0.5)
    assert report["order_disagreement"] == pytest.approx(1 / 3)


def test_reward_judge_is_asked_once():
    calls = []

    def words(prompts, responses):
        calls.append(len(responses))
        return [float(len(r.split())) for r in responses]

    judge = RewardJudge(FunctionReward(words, name="words", batched=True))
    judged = judge_pairs(judge, ["p"] * 2, ["a b", "a"], ["a", "a"])
    assert judged["verdict"].tolist() == [1.0, 0.5] and "disagree" not in judged
    assert calls == [4]  # one call scoring both sides of the two pairs


def test_load_judge_accepts_vader_and_names_accepted_specs_otherwise():
    judge = load_judge("vader")
    assert judge.order_invariant and judge.name == "vader"
    assert judge(["p"], ["What a wonderful, great film!"], ["A terrible, awful film."]).tolist() == [1.0]
    with pytest.raises(ValueError, match="unknown judge 'gpt-judge'.*accepted judges: 'vader'"):
        load_judge("gpt-judge")


# ---- summary statistics ------------------------------------------------------------------------


def test_distinct_n_hand_values():
    """'a b a b' and 'a c': unigrams a b a b a c -> {a, b, c} = 3 / 6; bigrams (a b) (b a) (a b) (a c)
    -> 3 unique / 4. A one-word text has no bigram."""
    texts = ["a b a b", "a c"]
    assert distinct_n(texts, 1) == pytest.approx(3 / 6)
    assert distinct_n(texts, 2) == pytest.approx(3 / 4)
    assert distinct_n(["word"], 2) == 0.0


def test_mean_std_stderr_hand_values():
    """[1, 2, 3, 4]: mean 2.5, sample std sqrt(5/3), stderr std / 2."""
    out = mean_std_stderr(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert out["mean"] == pytest.approx(2.5)
    assert out["std"] == pytest.approx(math.sqrt(5 / 3))
    assert out["stderr"] == pytest.approx(math.sqrt(5 / 3) / 2)
