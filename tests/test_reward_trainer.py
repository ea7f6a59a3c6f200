"""`tether rm train|eval|score` on tiny models: learning, rankings through Plackett–Luce, ensembles."""

import json
import random

import pytest
import torch

from tether.config import load_config
from tether.evaluate.reward_model import run_rm_eval
from tether.trainers.rm import RewardLoss, RMConfig, run_rm_train

ITEMS = ["apple", "river", "stone", "cloud", "maple", "ember", "frost", "grain", "harbor", "island", "kettle", "lemon", "meadow", "nickel", "orchid", "pepper"]


def _pairs_file(path, n=64, seed=0):
    """Chosen says 'good', rejected says 'poor': same length, so only content can separate them."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(n):
            item = rng.choice(ITEMS)
            f.write(json.dumps({"prompt": f"Rate the {item} #{i}", "chosen": f"The {item} is good.", "rejected": f"The {item} is poor."}) + "\n")
    return path


def _rankings_file(path, n=48, seed=0):
    """Best first: 'good' > 'okay' > 'poor', all the same length."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(n):
            item = rng.choice(ITEMS)
            f.write(json.dumps({"prompt": f"Rate the {item} #{i}", "completions": [f"The {item} is {w}." for w in ("good", "okay", "poor")]}) + "\n")
    return path


def _cfg(data, out, steps=30, **extra):
    base = {
        "model.name_or_path": "tiny",
        "data.path": str(data),
        "data.eval_fraction": "0.25",
        "train.output_dir": str(out),
        "train.max_steps": str(steps),
        "train.batch_size": "8",
        "train.micro_batch_size": "8",
        "train.lr": "3e-3",
        "train.warmup_ratio": "0",
        "train.progress": "false",
        "train.threads": "1",
        "train.save_every": "0",
    }
    base.update(extra)
    return load_config(RMConfig, None, [f"{k}={v}" for k, v in base.items()])


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_training_beats_length_baseline_on_toy_pairs(tmp_path, pooling):
    data = _pairs_file(tmp_path / "pairs.jsonl")
    run_rm_train(_cfg(data, tmp_path / "run", steps=30, **{"rm.pooling": pooling}))
    assert json.loads((tmp_path / "run" / "model" / "reward_config.json").read_text())["pooling"] == pooling
    report = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert report["length_baseline_accuracy"] == pytest.approx(0.5)
    assert report["accuracy"] >= 0.9, report
    # `tether rm eval` on the saved model reproduces the trainer's held-out numbers.
    again = run_rm_eval(str(tmp_path / "run" / "model"), str(data), output=str(tmp_path / "eval.json"))
    assert again["accuracy"] >= 0.9


def test_rankings_train_through_plackett_luce_in_one_pass(tmp_path, monkeypatch):
    import tether.trainers.rm as rm

    seen = []
    original = rm.RewardObjective.loss

    def spy(self, model, examples):
        seen.append((self.loss_kind, [len(e.sequences) for e in examples]))
        return original(self, model, examples)

    monkeypatch.setattr(rm.RewardObjective, "loss", spy)
    data = _rankings_file(tmp_path / "rank.jsonl")
    run_rm_train(_cfg(data, tmp_path / "run", steps=30))
    assert all(kind is RewardLoss.PLACKETT_LUCE for kind, _ in seen)
    assert all(sizes and set(sizes) == {3} for _, sizes in seen)  # whole rankings, never pairs
    report = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert report["accuracy"] >= 0.9, report  # over all 3 ordered pairs of each held-out ranking


def test_rankings_train_with_pairs_held_out(tmp_path):
    """Train on whole rankings, evaluate on a separate file of pairs: each file keeps its own kind."""
    train = _rankings_file(tmp_path / "rank.jsonl")
    held_out = _pairs_file(tmp_path / "pairs.jsonl", n=16, seed=5)
    run_rm_train(_cfg(train, tmp_path / "run", steps=30, **{"data.eval_path": str(held_out)}))
    report = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert report["pairs"] == 16 and report["accuracy"] >= 0.9, report


def test_eval_file_of_demonstrations_is_refused_by_name(tmp_path):
    train = _pairs_file(tmp_path / "pairs.jsonl")
    demos = tmp_path / "demos.jsonl"
    demos.write_text(json.dumps({"prompt": "Rate the lemon", "completion": "The lemon is good."}) + "\n")
    with pytest.raises(ValueError, match=r"demos\.jsonl: reward models train and evaluate on preference pairs or rankings, not demonstration records"):
        run_rm_train(_cfg(train, tmp_path / "run", steps=1, **{"data.eval_path": str(demos)}))


def test_multi_objective_heads_learn_their_own_labels(tmp_path):
    """'helpful' prefers 'good' over 'poor'; 'terse' prefers the opposite on the same texts."""
    helpful = _pairs_file(tmp_path / "helpful.jsonl", seed=1)
    terse = tmp_path / "terse.jsonl"
    with open(terse, "w") as f:
        for line in open(helpful):
            row = json.loads(line)
            f.write(json.dumps({**row, "chosen": row["rejected"], "rejected": row["chosen"]}) + "\n")
    cfg = _cfg(helpful, tmp_path / "run", steps=40, **{"rm.objectives": "[helpful, terse]", "rm.objective_data": f"[{helpful}, {terse}]"})
    run_rm_train(cfg)
    from tether.models.reward import RewardModel

    model = RewardModel.from_pretrained(tmp_path / "run" / "model")
    prompts = ["Rate the lemon #999"] * 2
    scores = model.score_all(prompts, ["The lemon is good.", "The lemon is poor."])  # [2, 2]
    assert scores[0, 0] > scores[1, 0]  # helpful head
    assert scores[0, 1] < scores[1, 1]  # terse head
    assert model.score(prompts, ["The lemon is good.", "The lemon is poor."], weights={"helpful": 1.0, "terse": 0.0})[0] > model.score(prompts, ["The lemon is good.", "The lemon is poor."], weights={"helpful": 1.0, "terse": 0.0})[1]


def test_ensemble_spread_is_larger_off_distribution(tmp_path):
    """LoRA members trained on a narrow set agree on held-out inputs like it and disagree on inputs unlike it.

    (Full fine-tuned members of the tiny random model overfit each in its own way and do not pass
    this test; the LoRA layout, one frozen backbone, is the one that gives a usable signal here.)
    """
    data = _pairs_file(tmp_path / "pairs.jsonl", n=64)
    extra = {"rm.ensemble_size": "3", "rm.centering_coef": "0.1", "lora.enabled": "true", "lora.r": "8", "lora.alpha": "16", "train.lr": "1e-2"}
    run_rm_train(_cfg(data, tmp_path / "run", steps=25, **extra))
    from tether.models.reward_ensemble import RewardEnsemble

    ensemble = RewardEnsemble.from_pretrained(tmp_path / "run" / "model")
    assert ensemble.layout == "lora" and len(ensemble.members) == 3
    like = [(f"Rate the {w} #{500 + i}", f"The {w} is {q}.") for i, w in enumerate(ITEMS) for q in ("good", "poor")]
    rng = random.Random(1)
    unlike = [("".join(rng.choice("0123456789%$#@!~^&*") for _ in range(12)), "".join(rng.choice("XYZQJKVW{}[]|<>") for _ in range(30))) for _ in range(32)]
    _, spread_like = ensemble.score([p for p, _ in like], [r for _, r in like])
    _, spread_unlike = ensemble.score([p for p, _ in unlike], [r for _, r in unlike])
    assert spread_unlike.mean() > 2.0 * spread_like.mean(), (spread_like.mean(), spread_unlike.mean())
    # The penalised reward is the mean minus lambda times the spread.
    mean, spread = ensemble.score([p for p, _ in unlike], [r for _, r in unlike])
    torch.testing.assert_close(ensemble.penalized(2.0)([p for p, _ in unlike], [r for _, r in unlike]), mean - 2.0 * spread)


def test_cli_rm_score_and_eval(tmp_path):
    from tether.cli import main

    data = _pairs_file(tmp_path / "pairs.jsonl", n=24)
    out = tmp_path / "run"
    assert main(["rm", "train", "--model", "tiny", "--data", str(data), "--output", str(out), "--max-steps", "3", "train.progress=false", "train.threads=1"]) == 0
    assert main(["rm", "score", "--model", str(out / "model"), "--input", str(data), "--output", str(tmp_path / "scores.jsonl")]) == 0
    rows = [json.loads(line) for line in open(tmp_path / "scores.jsonl")]
    assert len(rows) == 24 and {"reward_chosen", "reward_rejected"} <= set(rows[0])
    assert main(["rm", "eval", "--model", str(out / "model"), "--data", str(data), "--output", str(tmp_path / "m.json")]) == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    from tether.losses.reward import pairwise_accuracy

    chosen = torch.tensor([r["reward_chosen"] for r in rows])
    rejected = torch.tensor([r["reward_rejected"] for r in rows])
    assert metrics["accuracy"] == pytest.approx(float(pairwise_accuracy(chosen, rejected)))


@pytest.mark.parametrize("lora", [False, True])
def test_ensemble_saves_and_reloads_with_its_pooling(tmp_path, lora):
    data = _pairs_file(tmp_path / "pairs.jsonl", n=24)
    run_rm_train(_cfg(data, tmp_path / "run", steps=2, **{"rm.ensemble_size": "2", "rm.pooling": "mean", "lora.enabled": str(lora).lower()}))
    from tether.models.reward_ensemble import RewardEnsemble

    ensemble = RewardEnsemble.from_pretrained(tmp_path / "run" / "model")
    assert ensemble.layout == ("lora" if lora else "full") and len(ensemble.members) == 2
    assert [m.pooling for m in ensemble.members] == ["mean", "mean"]
    report = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert report["ensemble_spread_mean"] > 0  # members differ (seed, bootstrap)
    again = run_rm_eval(str(tmp_path / "run" / "model"), str(data))
    assert "ensemble_spread_mean" in again


def test_resume_from_checkpoint_matches_straight_run(tmp_path):
    """4 steps straight vs. the same run cut back to its step-2 checkpoint and resumed: same head."""
    import shutil

    from safetensors.torch import load_file

    data = _pairs_file(tmp_path / "pairs.jsonl", n=32)
    straight = tmp_path / "straight"
    run_rm_train(_cfg(data, straight, steps=4, **{"train.save_every": "2", "train.keep_checkpoints": "5"}))
    resumed = tmp_path / "resumed"
    run_rm_train(_cfg(data, resumed, steps=4, **{"train.save_every": "2", "train.keep_checkpoints": "5"}))
    shutil.rmtree(resumed / "checkpoints" / "step-0000004")  # as if killed after step 2's checkpoint
    shutil.rmtree(resumed / "model")
    run_rm_train(_cfg(data, resumed, steps=4, **{"train.save_every": "2", "train.resume": "true"}))
    for name in ("reward_head.safetensors", "model.safetensors"):  # the head and the fine-tuned backbone
        a = load_file(str(straight / "model" / name))
        b = load_file(str(resumed / "model" / name))
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=f"{name}:{key}")

    def losses(run):
        rows = [json.loads(line) for line in open(run / "metrics.jsonl")]
        return {r["step"]: r["loss"] for r in rows if r["split"] == "train"}

    # Steps 3 and 4 of the resumed run saw the same examples and gave the same losses.
    assert losses(resumed)[3] == losses(straight)[3] and losses(resumed)[4] == losses(straight)[4]


def _two_objective_file(path, n=48, seed=2):
    """One file, two heads: 'helpful' prefers 'good' over 'poor'; 'terse' prefers the reverse of the
    same replies. Each pair appears once per objective, told apart only by the 'objective' field."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(n):
            item = rng.choice(ITEMS)
            good, poor = f"The {item} is good.", f"The {item} is poor."
            f.write(json.dumps({"prompt": f"Rate the {item} #{i}", "chosen": good, "rejected": poor, "objective": "helpful"}) + "\n")
            f.write(json.dumps({"prompt": f"Rate the {item} #{i}", "chosen": poor, "rejected": good, "objective": "terse"}) + "\n")
    return path


def test_objective_field_in_one_file_trains_each_head_on_its_rows(tmp_path):
    data = _two_objective_file(tmp_path / "multi.jsonl")
    run_rm_train(_cfg(data, tmp_path / "run", steps=40, **{"rm.objectives": "[helpful, terse]"}))
    report = json.loads((tmp_path / "run" / "eval.json").read_text())
    # A single head could get at most half of these right: the two objectives disagree on every pair.
    assert report["accuracy/helpful"] >= 0.9 and report["accuracy/terse"] >= 0.9, report
    again = run_rm_eval(str(tmp_path / "run" / "model"), str(data))
    assert again["accuracy/helpful"] >= 0.9 and again["accuracy/terse"] >= 0.9


def test_objective_field_errors_name_file_line_and_field(tmp_path):
    from tether.data.errors import DataError
    from tether.trainers.rm import objective_labels, prepare_reward_data

    rows = [
        {"prompt": "a", "chosen": "x", "rejected": "y", "objective": "helpful"},
        {"prompt": "b", "chosen": "x", "rejected": "y", "objective": "honest"},  # line 2: not a head of this model
        {"prompt": "c", "chosen": "x", "rejected": "y"},  # line 3: missing while others have it
        {"prompt": "d", "chosen": "x", "rejected": "y", "objective": 3},  # line 4: not text
    ]
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=r"bad.jsonl:2: field 'objective': unknown objective 'honest'"):
        objective_labels(str(path), ["helpful", "harmless"])
    labels, errors = objective_labels(str(path), ["helpful", "harmless"], on_error="skip")
    assert labels == {1: 0}
    assert sorted((e.line, e.field) for e in errors) == [(2, "objective"), (3, "objective"), (4, "objective")]
    # Several heads but no row says which one it labels: a clear error, not a silent head 0.
    plain = _pairs_file(tmp_path / "plain.jsonl", n=12)
    with pytest.raises(ValueError, match="no row has an 'objective' field"):
        prepare_reward_data(None, _cfg(plain, tmp_path / "run", **{"rm.objectives": "[helpful, harmless]"}))
    # A file given for one objective may not hold rows naming another.
    with pytest.raises(DataError, match="rm.objective_data for 'harmless'"):
        objective_labels(str(path), ["helpful", "harmless"], fixed="harmless")


def test_rm_score_writes_each_head_and_ensemble_mean_and_spread(tmp_path):
    """Two heads: 'reward' in the file is the weighted sum of the 'objectives' columns.
    An ensemble: 'reward' = mean − penalty·spread."""
    from tether.models.reward import RewardModel
    from tether.evaluate.reward_model import run_rm_score

    data = _pairs_file(tmp_path / "pairs.jsonl", n=6)
    from tether.models import tiny_model_and_tokenizer

    backbone, tokenizer = tiny_model_and_tokenizer(seed=0)
    RewardModel(backbone, tokenizer, ("helpful", "harmless")).save_pretrained(tmp_path / "multi")
    run_rm_score(str(tmp_path / "multi"), str(data), str(tmp_path / "s.jsonl"), weights={"helpful": 2.0, "harmless": -1.0})
    rows = [json.loads(line) for line in open(tmp_path / "s.jsonl")]
    assert len(rows) == 6
    for row in rows:
        heads = row["objectives"]
        assert row["reward_chosen"] == pytest.approx(2.0 * heads["helpful"][0] - heads["harmless"][0], abs=1e-5)
        assert row["reward_rejected"] == pytest.approx(2.0 * heads["helpful"][1] - heads["harmless"][1], abs=1e-5)

    run_rm_train(_cfg(data, tmp_path / "ens", steps=1, **{"rm.ensemble_size": "2", "data.eval_fraction": "0"}))
    run_rm_score(str(tmp_path / "ens" / "model"), str(data), str(tmp_path / "e.jsonl"), penalty=3.0)
    rows = [json.loads(line) for line in open(tmp_path / "e.jsonl")]
    assert len(rows) == 6
    for row in rows:
        assert row["spread"][0] > 0
        assert row["reward_chosen"] == pytest.approx(row["mean"][0] - 3.0 * row["spread"][0], abs=1e-5)


@pytest.mark.parametrize("lora", [False, True])
def test_a_reward_model_on_the_first_layers_saves_and_reloads_cut(tmp_path, lora):
    """rm.layers=1 on the 2-layer tiny model: the saved model has one decoder layer, reloads as one,
    and `tether rm eval` on the reloaded model reproduces the trainer's held-out accuracy; the cut
    model's hidden states are the full model's after its first layer (then the final norm)."""
    from tether.models.forward import keep_first_layers
    from tether.models.reward import RewardModel
    from tether.models.tiny import tiny_model_and_tokenizer

    data = _pairs_file(tmp_path / "pairs.jsonl")
    run_rm_train(_cfg(data, tmp_path / "run", steps=30, **{"rm.layers": "1", "lora.enabled": str(lora).lower()}))
    config = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert config["num_hidden_layers"] == 1
    model = RewardModel.from_pretrained(tmp_path / "run" / "model")
    assert len(model.backbone.get_decoder().layers) == 1
    report = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert report["accuracy"] >= 0.9, report
    assert run_rm_eval(str(tmp_path / "run" / "model"), str(data))["accuracy"] == pytest.approx(report["accuracy"])

    full, _ = tiny_model_and_tokenizer(seed=3)
    ids = torch.tensor([[5, 9, 11, 4]])
    with torch.no_grad():
        inner = full.get_decoder()
        expected = inner.norm(full(ids, output_hidden_states=True).hidden_states[1])  # after layer 1, then the final norm
        keep_first_layers(full, 1)
        torch.testing.assert_close(full.get_decoder()(ids).last_hidden_state, expected, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="first 3 layers of a model with 1"):
        keep_first_layers(full, 3)
