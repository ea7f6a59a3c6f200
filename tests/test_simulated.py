"""Simulated annotators: pairs and rankings labelled by a gold function."""

from tether.feedback.simulated import gold_pairs, gold_rankings, label_pair, vader_gold

SCORES = {"great": 0.9, "fine": 0.5, "meh": 0.45, "awful": -0.8}
gold = SCORES.__getitem__


def test_label_pair_orders_by_gold_and_drops_ties():
    pair = label_pair("p", "awful", "great", gold)
    assert (pair["chosen"], pair["rejected"]) == ("great", "awful")
    assert (pair["gold_chosen"], pair["gold_rejected"]) == (0.9, -0.8)
    assert label_pair("p", "fine", "meh", gold, min_gap=0.1) is None  # 0.05 apart: a tie


def test_gold_pairs_every_pair_above_the_gap_and_capped():
    rows = [{"prompt": "p", "completions": list(SCORES)}]
    pairs = gold_pairs(rows, gold, min_gap=0.1)
    assert len(pairs) == 5  # 6 pairs of 4, less fine/meh
    assert all(p["gold_chosen"] - p["gold_rejected"] > 0.1 for p in pairs)
    capped = gold_pairs(rows, gold, min_gap=0.1, max_pairs_per_prompt=2)
    assert len(capped) == 2 and all(p in pairs for p in capped)


def test_gold_rankings_best_first_without_duplicates():
    rows = [{"prompt": "p", "completions": ["meh", "great", "awful", "great", "fine"]}, {"prompt": "q", "completions": ["fine", "fine"]}]
    (ranking,) = gold_rankings(rows, gold)  # q has one distinct completion: nothing to rank
    assert ranking["completions"] == ["great", "fine", "meh", "awful"]
    assert ranking["gold_scores"] == [0.9, 0.5, 0.45, -0.8]


def test_vader_gold_prefers_praise():
    assert vader_gold("A wonderful, moving film.") > 0.5 > vader_gold("A dull film.") > vader_gold("A terrible, boring mess.")


# ---- noisy simulated annotators ---------------------------------------------------------------

import json  # noqa: E402
import math  # noqa: E402

import pytest  # noqa: E402

from tether.feedback.judges import PairJudge, both_orders  # noqa: E402
from tether.feedback.simulated import SimulatedAnnotator, annotator_pool, label_samples, load_gold  # noqa: E402
from tether.rollout.rewards import FunctionReward  # noqa: E402

TABLE = FunctionReward(lambda prompt, reply: SCORES[reply], name="table")


def _noise_rate(annotator, better, worse, n):
    labels = annotator.label(["p"] * n, [better] * n, [worse] * n)
    return float((labels == 0.0).double().mean())


def test_label_noise_rate_matches_the_bradley_terry_temperature():
    """great vs awful: gold gap Δ = 0.9 − (−0.8) = 1.7. At τ = 1 the worse reply wins with probability
    σ(−1.7) = 1/(1+e^1.7) = 0.1545; at τ = 0.5, σ(−3.4) = 0.0323. 5000 draws give a standard error
    of sqrt(p(1−p)/n) ≤ 0.0052, so 4 standard errors separate the two rates by far."""
    n = 5000
    for tau in (1.0, 0.5):
        expected = 1 / (1 + math.exp(1.7 / tau))
        rate = _noise_rate(SimulatedAnnotator(TABLE, tau, seed=1), "great", "awful", n)
        assert abs(rate - expected) < 4 * math.sqrt(expected * (1 - expected) / n), (tau, rate, expected)
    assert _noise_rate(SimulatedAnnotator(TABLE, 0.0), "great", "awful", 200) == 0.0  # τ = 0: never wrong


def test_the_judge_probability_is_the_bradley_terry_one_and_ties_below_the_margin():
    """fine vs meh: gap 0.05. With margin 0.1 every label is a tie (0.5) and the judge says 0.5;
    with margin 0.01 none is, and P(fine ≻ meh) = σ(0.05 / 0.1) = σ(0.5) = 0.6225."""
    tied = SimulatedAnnotator(TABLE, 0.1, tie_margin=0.1)
    assert set(tied.label(["p"] * 50, ["fine"] * 50, ["meh"] * 50).tolist()) == {0.5}
    assert tied(["p"], ["fine"], ["meh"]).item() == 0.5
    strict = SimulatedAnnotator(TABLE, 0.1, tie_margin=0.01)
    assert 0.5 not in strict.label(["p"] * 50, ["fine"] * 50, ["meh"] * 50).tolist()
    assert strict(["p"], ["fine"], ["meh"]).item() == pytest.approx(1 / (1 + math.exp(-0.5)), abs=1e-6)
    assert isinstance(strict, PairJudge)
    verdict = both_orders(strict, ["p"], ["fine"], ["meh"])  # symmetric: both orders agree
    assert not verdict.disagree.any() and verdict.prob.item() == pytest.approx(0.6225, abs=1e-4)


def test_each_annotator_has_its_own_noise():
    """Pool τ = (0.2, 1.0) on fine vs awful (gap 1.3): noise σ(−6.5) = 0.0015 and σ(−1.3) = 0.214."""
    low, high = annotator_pool(TABLE, [0.2, 1.0], seed=3)
    n = 3000
    rate_low, rate_high = _noise_rate(low, "fine", "awful", n), _noise_rate(high, "fine", "awful", n)
    assert rate_low < 0.01 and abs(rate_high - 0.2142) < 4 * math.sqrt(0.2142 * 0.7858 / n)
    assert low.name != high.name


def test_label_samples_writes_pairs_and_rankings_the_trainers_read(tmp_path):
    from tether.data import load_records

    rows = [{"prompt": "p", "completions": ["great", "fine", "meh", "awful"]}, {"prompt": "q", "completions": ["fine", "awful", "fine"]}]
    pool = annotator_pool(TABLE, [0.0, 0.0, 0.0], tie_margin=0.1)
    pairs, counts = label_samples(rows, pool, per_item=2, seed=0)
    # 6 pairs of p + 1 of q = 7 items, 2 labels each; fine/meh (gap 0.05) ties for both its annotators
    assert counts == {"items": 7, "labels": 14, "ties": 2, "flipped": 0}
    assert len(pairs) == 12 and all(p["gold_gap"] > 0.1 for p in pairs)
    for item in {(p["prompt"], p["chosen"], p["rejected"]) for p in pairs}:  # two distinct annotators per item
        assert len({p["annotator"] for p in pairs if (p["prompt"], p["chosen"], p["rejected"]) == item}) == 2
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    loaded = load_records(path)
    assert loaded.kind == "preference" and len(loaded.records) == 12
    rankings, _ = label_samples(rows, pool, kind="rankings", per_item=1)
    assert rankings[0]["completions"] == ["great", "fine", "meh", "awful"]  # τ = 0: the gold order
    path.write_text("".join(json.dumps(r) + "\n" for r in rankings))
    assert load_records(path).kind == "ranking"


def test_plackett_luce_rankings_are_noisy_at_high_temperature():
    """τ = 100 makes the Gumbel noise dominate: the gold order comes out rarely (1/24 if uniform)."""
    annotator = SimulatedAnnotator(TABLE, 100.0, seed=0)
    exact = sum(annotator.rank("p", list(SCORES)) == [0, 1, 2, 3] for _ in range(200))
    assert exact < 40


def test_gold_specs():
    length, keyword = load_gold("length"), load_gold("keyword=great,fun")
    assert length.score(["p", "p"], ["one two three", "x"])["reward"].tolist() == [3.0, 1.0]
    assert keyword.score(["p"] * 2, ["Great fun, great cast", "greatest"])["reward"].tolist() == [3.0, 0.0]
    assert load_gold("vader").score(["p"], ["A wonderful film."])["reward"].item() > 0.5
    assert load_gold("toy_rewards:LowercaseReward").name == "lowercase"  # module:object through the reward loader
    with pytest.raises(ValueError, match="keyword"):
        load_gold("keyword=")


def test_cli_label(tmp_path, capsys):
    from tether.cli import main

    samples = tmp_path / "s.jsonl"
    samples.write_text(json.dumps({"prompt": "p", "completions": ["great", "fine", "awful"]}) + "\n")
    out = tmp_path / "pairs.jsonl"
    assert main(["label", "--samples", str(samples), "--output", str(out), "--labeller", "simulated:keyword=great", "--temperatures", "0,0", "--tie-margin", "0.5", "--per-item", "2"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    # keyword 'great' scores 1, 0, 0: two pairs won by 'great' (gap 1), fine/awful a tie; 2 annotators each
    assert len(rows) == 4 and {r["chosen"] for r in rows} == {"great"}
    assert "3 items, 6 labels from 2 annotators, 2 ties left out" in capsys.readouterr().out
