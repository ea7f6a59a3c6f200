"""AI judge: letter probabilities, both orders, the constitution in the prompt, critique-then-revise."""

import json
from types import SimpleNamespace

import pytest
import torch

from tether.feedback.ai_judge import AIJudge, Constitution, judge_messages, judge_pairs, letter_ids, load_constitution, revise
from tether.feedback.judges import PairJudge
from tether.models import tiny_model_and_tokenizer
from tether.rollout.engine import encode_prompts

CONSTITUTION = Constitution(("Prefer the kinder reply.", "Prefer the shorter reply."), "test")


class AlwaysA(torch.nn.Module):
    """A stub causal LM whose next-token logits favour "A" (logit 3) over "B" (logit 1) whatever it reads,
    and that records every input it is shown."""

    def __init__(self, vocab_size, a_id, b_id):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.vocab_size, self.a_id, self.b_id = vocab_size, a_id, b_id
        self.seen = []

    def forward(self, input_ids, attention_mask=None, position_ids=None, logits_to_keep=0):
        self.seen += input_ids.tolist()
        logits = torch.zeros(input_ids.shape[0], 1, self.vocab_size)  # [B, 1, V]
        logits[..., self.a_id], logits[..., self.b_id] = 3.0, 1.0
        return SimpleNamespace(logits=logits)


def test_a_judge_that_always_says_a_ties_every_pair_and_disagrees_with_itself_always():
    """P(A) = σ(3 − 1) = 0.8808 in each order; read for the first response: 0.8808 and 1 − 0.8808,
    so the mean is exactly 0.5 (a tie) and the orders pick different winners on every pair."""
    _, tok = tiny_model_and_tokenizer()
    a, b = letter_ids(tok)
    stub = AlwaysA(len(tok), a, b)
    judge = AIJudge(stub, tok, CONSTITUTION, batch_size=2)
    assert isinstance(judge, PairJudge)
    p = judge(["q"], ["x"], ["y"])
    assert p.item() == pytest.approx(torch.sigmoid(torch.tensor(2.0)).item(), abs=1e-6)
    stub.seen.clear()
    items = [("q1", "good", "bad"), ("q2", "fine", "poor"), ("q3", "yes", "no")]
    rows, report, prob = judge_pairs(judge, items)
    assert rows == [] and report.ties == 3 and report.disagreements == 3 and report.disagreement_rate == 1.0
    assert torch.all(prob == 0.5)
    # both orders were asked: each pair was shown once as (A=first, B=second) and once swapped
    shown = [tok.decode([t for t in ids if t != tok.pad_token_id]) for ids in stub.seen]
    assert len(shown) == 6
    for _, x, y in items:
        assert sum(f"Response A:\n{x}\n\nResponse B:\n{y}" in s for s in shown) == 1
        assert sum(f"Response A:\n{y}\n\nResponse B:\n{x}" in s for s in shown) == 1


def test_the_prompt_states_every_principle_and_both_responses():
    text = judge_messages(CONSTITUTION, "Say hi", "Hello!", "Go away.")[0]["content"]
    for principle in CONSTITUTION.principles:
        assert principle in text
    assert text.index("Response A:\nHello!") < text.index("Response B:\nGo away.") and "Say hi" in text


def test_tiny_model_probabilities_match_an_unbatched_forward():
    """Batched, left-padded judging equals σ(l_A − l_B) from one unpadded forward per item."""
    model, tok = tiny_model_and_tokenizer()
    judge = AIJudge(model, tok, CONSTITUTION, batch_size=3)
    prompts, first, second = ["a", "a longer request here"], ["one", "two two"], ["three three three", "4"]
    p = judge(prompts, first, second)
    assert torch.all((p >= 0) & (p <= 1))
    a, b = letter_ids(tok)
    for i in range(2):
        ids = torch.tensor(encode_prompts(tok, [judge_messages(CONSTITUTION, prompts[i], first[i], second[i])]))
        logits = model(input_ids=ids).logits[0, -1]
        assert p[i].item() == pytest.approx(torch.sigmoid(logits[a] - logits[b]).item(), abs=1e-5)
    rows, report, prob = judge_pairs(judge, list(zip(prompts, first, second)))
    for row, pr in zip(rows, prob.tolist()):
        assert row["judge_prob"] == pytest.approx(max(pr, 1 - pr)) and row["judge_prob"] >= 0.5
    assert 0.0 <= report.letter_mass <= 1.0 and report.pairs == 2


def test_constitutions_load_and_bad_ones_are_named(tmp_path):
    default = load_constitution()
    assert len(default.principles) >= 3 and default.source.endswith("default.yaml")
    assert "positive" in " ".join(load_constitution("sentiment").principles)
    flat = tmp_path / "flat.yaml"
    flat.write_text("- Be brief.\n- Be kind.\n")
    assert load_constitution(str(flat)).principles == ("Be brief.", "Be kind.")
    bad = tmp_path / "bad.yaml"
    bad.write_text("principles:\n  - Be brief.\n  - 3\n")
    with pytest.raises(ValueError, match=r"bad.yaml: principles\[1\]"):
        load_constitution(str(bad))
    with pytest.raises(ValueError, match="no such constitution"):
        load_constitution(str(tmp_path / "missing.yaml"))


def test_revise_writes_demonstrations_that_load(tmp_path):
    from tether.data import load_records
    from tether.feedback.sample import write_jsonl

    # the random tiny model's greedy reply is blank lines (token 10, "\n"), which strips to nothing:
    # move that row of its untied head to "x" so that replies have text
    model, tok = tiny_model_and_tokenizer(tie_word_embeddings=False)
    with torch.no_grad():
        model.lm_head.weight[ord("x")] = model.lm_head.weight[10]
        model.lm_head.weight[10] = 0.0
    items = [("Say hi", "Go away."), ([{"role": "user", "content": "Name a colour"}], "Loud.")]
    demos, empty = revise(model, tok, CONSTITUTION, items, max_new_tokens=8, batch_size=2)
    assert len(demos) == 2 and empty == 0
    assert all(d["principle"] in CONSTITUTION.principles and d["original"] in ("Go away.", "Loud.") for d in demos)
    path = tmp_path / "demos.jsonl"
    write_jsonl(path, demos)
    loaded = load_records(path)
    assert loaded.kind == "demonstration" and [r.completion for r in loaded.records] == [d["completion"] for d in demos]


def test_cli_judge_and_revise(tmp_path, capsys):
    from tether.cli import main
    from tether.data import load_records

    samples = tmp_path / "s.jsonl"
    samples.write_text("".join(json.dumps({"prompt": f"Review film {i}.", "completions": ["Great film, loved it.", "Awful and dull.", "Fine."]}) + "\n" for i in range(2)))
    pairs = tmp_path / "pairs.jsonl"
    torch.manual_seed(0)
    assert main(["judge", "--samples", str(samples), "--output", str(pairs), "--model", "tiny", "--compare-gold", "vader", "--report", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "judge: 6 pairs" in out and "judge vs gold vader" in out
    report = json.loads((tmp_path / "r.json").read_text())
    assert 0.0 <= report["order_disagreement_rate"] <= 1.0 and report["pairs"] == 6
    if report["written"]:
        assert load_records(pairs).kind == "preference"
    demos = tmp_path / "demos.jsonl"
    torch.manual_seed(0)
    assert main(["judge", "revise", "--samples", str(samples), "--output", str(demos), "--model", "tiny", "--max-new-tokens", "6"]) == 0
    assert "2 responses critiqued and revised" in capsys.readouterr().out
    assert main(["judge", "--output", str(pairs)]) == 1  # no --samples: a clear error, not a traceback
