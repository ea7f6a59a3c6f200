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
