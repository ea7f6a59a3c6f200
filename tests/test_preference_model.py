"""Pairwise preference model: symmetry by construction, agreement with Bradley–Terry on
transitive data, save/reload, and `tether pm train | eval` on the tiny model."""

import json
import random

import pytest
import torch

from tether.losses.pairwise import pairwise_preference_loss

torch.set_num_threads(1)

WORDS = ["awful", "poor", "plain", "decent", "great", "superb"]  # true Bradley–Terry score = index


def _tiny_pm(seed=0):
    from tether.models.preference import PreferenceModel
    from tether.models.tiny import tiny_model_and_tokenizer

    torch.manual_seed(seed)
    model, tok = tiny_model_and_tokenizer()
    return PreferenceModel(model, tok, max_length=128)


def test_loss_hand_values():
    """d = 1 − (−1) = 2: label 1 gives −log σ(2) = 0.126928; label 0 gives −log σ(−2) = 2.126928;
    label 1/2 gives the mean of the two, 1.126928."""
    a, b = torch.tensor([1.0, 1.0, 1.0]), torch.tensor([-1.0, -1.0, -1.0])
    losses, metrics = pairwise_preference_loss(a, b, torch.tensor([1.0, 0.0, 0.5]))
    torch.testing.assert_close(losses, torch.tensor([0.126928, 2.126928, 1.126928]), atol=1e-5, rtol=0)
    assert float(metrics["accuracy"]) == pytest.approx(1 / 3)  # the 1/2 label counts as neither
    _, tied = pairwise_preference_loss(torch.zeros(4), torch.zeros(4), torch.tensor([1.0, 0.0, 1.0, 0.5]))
    assert float(tied["accuracy"]) == pytest.approx((0.5 + 0.5 + 0.5 + 0) / 4)  # d = 0: half credit, as pairwise_accuracy
    swapped, _ = pairwise_preference_loss(b, a, torch.tensor([0.0, 1.0, 0.5]))
    torch.testing.assert_close(swapped, losses)  # relabelling the swapped pair gives the same loss
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        pairwise_preference_loss(a, b, 1.5)


def test_symmetry_holds_exactly_on_an_untrained_model():
    """P(a≻b) + P(b≻a) = 1 for a random model, and the two logits are exact negatives."""
    pm = _tiny_pm()
    prompts = ["Rate it.", "Which is better?", "Say something."]
    first = ["It is great and fine.", "yes", "a"]
    second = ["poor", "No, not at all, never.", "b c d e f"]
    p = pm.prob(prompts, first, second)
    q = pm.prob(prompts, second, first)
    assert not torch.allclose(p, torch.full_like(p, 0.5), atol=1e-6)  # the model does distinguish orders
    torch.testing.assert_close(p + q, torch.ones_like(p), atol=1e-6, rtol=0)
    torch.testing.assert_close(pm.logits(prompts, first, second), -pm.logits(prompts, second, first), atol=1e-6, rtol=0)
    # a response against itself is a tie, exactly
    torch.testing.assert_close(pm.prob(prompts, first, first), torch.full((3,), 0.5), atol=0, rtol=0)


def test_linear_pairwise_scorer_recovers_bradley_terry_probabilities():
    """Toy features: s(a, b) = u·f(a) + v·f(b) with one-hot f over 4 items, so the logit is
    (u − v)·(f(a) − f(b)), a Bradley–Terry model with scores u − v. Trained with the pairwise
    loss on labels drawn from known scores θ = (0, 0.5, 1.5, 3), its P(a≻b) must match
    σ(θ_a − θ_b) on every pair (maximum likelihood on 6000 draws: within 0.04)."""
    gen = torch.Generator().manual_seed(0)
    theta = torch.tensor([0.0, 0.5, 1.5, 3.0])
    n = 6000
    a = torch.randint(0, 4, (n,), generator=gen)
    b = (a + torch.randint(1, 4, (n,), generator=gen)) % 4  # b != a
    labels = (torch.rand(n, generator=gen) < torch.sigmoid(theta[a] - theta[b])).float()  # [n]
    u = torch.zeros(4, requires_grad=True)
    v = torch.zeros(4, requires_grad=True)
    opt = torch.optim.LBFGS([u, v], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = pairwise_preference_loss(u[a] + v[b], u[b] + v[a], labels)[0].mean()
        loss.backward()
        return loss

    opt.step(closure)
    i, j = torch.triu_indices(4, 4, 1)
    fitted = torch.sigmoid((u[i] + v[j]) - (u[j] + v[i])).detach()
    torch.testing.assert_close(fitted, torch.sigmoid(theta[i] - theta[j]), atol=0.04, rtol=0)


def _bt_pairs_file(path, prompts, seed=0):
    """Transitive pairs: for each prompt, every pair of WORDS, the higher-scored word wins."""
    rng = random.Random(seed)
    rows = []
    for p in prompts:
        for i in range(len(WORDS)):
            for j in range(i + 1, len(WORDS)):
                rows.append({"prompt": p, "chosen": f"It was {WORDS[j]}.", "rejected": f"It was {WORDS[i]}."})
    rng.shuffle(rows)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _train_cfg(data, out, steps, **extra):
    from tether.config import load_config
    from tether.trainers.pm import PMConfig

    base = {
        "model.name_or_path": "tiny", "data.path": str(data), "data.eval_fraction": "0", "train.output_dir": str(out),
        "train.max_steps": str(steps), "train.batch_size": "16", "train.micro_batch_size": "16", "train.lr": "3e-3",
        "train.warmup_ratio": "0", "train.progress": "false", "train.threads": "1", "train.save_every": "0", "data.max_length": "96",
    }
    base.update(extra)
    return load_config(PMConfig, None, [f"{k}={v}" for k, v in base.items()])


def test_trained_on_transitive_data_agrees_with_bradley_terry_order(tmp_path):
    """Trained on pairs whose winner is the higher Bradley–Terry score, the model's P(a≻b) on
    held-out prompts orders every pair as the true scores do (σ(θ_a − θ_b) > 1/2 iff θ_a > θ_b)
    in at least 90% of the 30 ordered pairs × 4 prompts, each word's mean win probability rises
    with its true score, the model is symmetric, and reloads with identical outputs."""
    from tether.models.preference import PreferenceJudge, PreferenceModel
    from tether.trainers.pm import run_pm_train

    data = _bt_pairs_file(tmp_path / "bt.jsonl", [f"Review film {k}." for k in range(8)])
    run_pm_train(_train_cfg(data, tmp_path / "run", 60))
    pm = PreferenceModel.from_pretrained(tmp_path / "run" / "model")
    prompts, first, second, truth = [], [], [], []
    for p in [f"Review show {k}." for k in range(4)]:
        for i in range(len(WORDS)):
            for j in range(len(WORDS)):
                if i != j:
                    prompts.append(p), first.append(f"It was {WORDS[i]}."), second.append(f"It was {WORDS[j]}."), truth.append(i > j)
    prob = PreferenceJudge(pm)(prompts, first, second)  # [120]
    agree = ((prob > 0.5) == torch.tensor(truth)).float().mean()
    assert agree >= 0.9, f"agreement with the Bradley-Terry order {agree:.2f}"
    # Borda score of word i: its mean P of beating the others; it must rise with the true score.
    first_word = torch.tensor([WORDS.index(f.split()[-1].rstrip(".")) for f in first])  # [120]
    borda = torch.stack([prob[first_word == i].mean() for i in range(len(WORDS))])  # [6]
    assert bool((borda[1:] > borda[:-1]).all()), borda
    swapped = pm.prob(prompts, second, first)
    torch.testing.assert_close(prob + swapped, torch.ones_like(prob), atol=1e-6, rtol=0)
    again = PreferenceModel.from_pretrained(tmp_path / "run" / "model").prob(prompts, first, second)
    torch.testing.assert_close(again, prob, atol=0, rtol=0)


def test_save_reload_identical_and_not_a_reward_model_dir(tmp_path):
    from tether.models.preference import PreferenceModel, is_preference_model_dir
    from tether.models.reward import is_reward_model_dir

    pm = _tiny_pm(3)
    with torch.no_grad():
        pm.head.weight.normal_()  # a head that is not the small initial one
    pm.save_pretrained(tmp_path / "pm")
    assert is_preference_model_dir(tmp_path / "pm") and not is_reward_model_dir(tmp_path / "pm")
    assert not any(p.suffix in (".bin", ".pt", ".pkl") for p in (tmp_path / "pm").iterdir())  # no pickle
    back = PreferenceModel.from_pretrained(tmp_path / "pm")
    args = (["Q1", "Q2"], ["one answer", "two"], ["another one", "three four"])
    torch.testing.assert_close(back.logits(*args), pm.logits(*args), atol=0, rtol=0)


def test_reward_source_and_judge_from_a_saved_directory(tmp_path):
    from tether.feedback.judges import PairJudge
    from tether.models.preference import PreferenceJudge
    from tether.rollout.rewards import PreferenceModelReward, load_reward_source

    _tiny_pm(4).save_pretrained(tmp_path / "pm")
    judge = PreferenceJudge(str(tmp_path / "pm"))
    assert isinstance(judge, PairJudge) and judge.name == "pm"
    source = load_reward_source(str(tmp_path / "pm"))
    assert isinstance(source, PreferenceModelReward)
    out = source.score(["Q", "Q"], ["a", "b"])  # each against the other: the two wins sum to 1
    assert float(out["reward"].sum()) == pytest.approx(1.0, abs=1e-6)


def test_load_judge_reads_a_preference_model_directory_as_itself(tmp_path):
    """`load_judge` (tether eval --judge, the annotation app, nash.judge) on a preference model
    directory gives the model's own P(first ≻ second), not its win probability as a reward compared
    by a RewardJudge; the reward-only settings are refused by name."""
    from tether.feedback.judges import load_judge
    from tether.models.preference import PreferenceJudge
    from tether.trainers.judging import build_judge

    pm = _tiny_pm(5)
    with torch.no_grad():
        pm.head.weight.normal_()
    pm.save_pretrained(tmp_path / "pm")
    judge = load_judge(str(tmp_path / "pm"))
    assert isinstance(judge, PreferenceJudge)
    args = (["Q1", "Q2"], ["one answer", "two"], ["another one", "three four"])
    torch.testing.assert_close(judge(*args), pm.prob(*args), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="temperature"):
        load_judge(str(tmp_path / "pm"), temperature=0.5)
    with pytest.raises(ValueError, match=r"nash.judge='nowhere'.*accepted judges"):
        build_judge("nowhere", 0.0, None, "nash.judge")


def test_cli_eval_with_a_preference_model_judge(tmp_path):
    """`tether eval --judge <pm dir>`: the preference model judges policy vs reference; antisymmetric
    by construction, it is asked once (no order-disagreement rate), and the report's mean judge
    probability is the model's own P(policy ≻ reference) over the saved samples."""
    from tether.cli import main
    from tether.models.preference import PreferenceJudge

    _tiny_pm(6).save_pretrained(tmp_path / "pm")
    pm, out = str(tmp_path / "pm"), tmp_path / "eval"
    code = main(["eval", "--policy", "tiny", "--reference", "tiny", "--held-out", "3", "--reward", "vader", "--judge", pm,
                 "--max-new-tokens", "4", "--bootstrap", "20", "--output", str(out)])
    assert code == 0
    report = json.loads((out / "eval.json").read_text())["win_rates"][pm]
    assert report["n"] == 3 and "order_disagreement" not in report
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    prob = PreferenceJudge(pm)([r["prompt"] for r in rows], [r["policy"] for r in rows], [r["reference"] for r in rows])  # [3]
    assert report["win_prob"] == pytest.approx(float(prob.double().mean()), abs=1e-6)
    verdicts = [r["verdicts"][pm] for r in rows]
    assert verdicts == [1.0 if p > 0.5 else 0.0 if p < 0.5 else 0.5 for p in prob.tolist()]


def test_cli_pm_train_and_eval_on_rankings(tmp_path):
    """`tether pm train` on rankings (expanded into ordered pairs) for a few steps, then `pm eval`."""
    from tether.cli import main

    rows = [{"prompt": f"Rate item {k}", "completions": [f"It is {w}." for w in ("good", "okay", "poor")]} for k in range(12)]
    data = tmp_path / "rank.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "cli"
    code = main(["pm", "train", "--model", "tiny", "--data", str(data), "--output", str(out), "--max-steps", "3",
                 "train.progress=false", "train.threads=1", "data.eval_fraction=0.25", "train.batch_size=4", "train.micro_batch_size=4"])
    assert code == 0
    report = json.loads((out / "eval.json").read_text())
    assert report["pairs"] == 9.0  # 3 held-out rankings x 3 ordered pairs
    assert 0.0 <= report["ece"] <= 1.0 and 0.0 <= report["accuracy"] <= 1.0
    assert len((out / "metrics.jsonl").read_text().splitlines()) >= 1
    assert main(["pm", "eval", "--model", str(out / "model"), "--data", str(data), "--output", str(tmp_path / "e.json")]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["pairs"] == 36.0
