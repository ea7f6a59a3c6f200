"""`tether annotate` commands: AI suggestions from a judge spec, active selection from a saved
reward-model ensemble, and an export that `tether rm train` reads."""

import json

import pytest
import torch

from tether.cli import main
from tether.feedback.annotate.select import ensemble_member_scores, priorities
from tether.feedback.annotate.store import Store

ROWS = [
    {"prompt": "Review a film.", "completions": ["Good.", "A truly wonderful film.", "Bad film."]},
    {"prompt": "Describe rain.", "completions": ["Wet and grey all day.", "Wet.", "Cold rain."]},
]


def reply_length(prompt, response):
    """A toy gold function for the judge: longer is better."""
    return float(len(response))


@pytest.fixture
def samples(tmp_path):
    path = tmp_path / "samples.jsonl"
    path.write_text("".join(json.dumps({**r, "sampling": {"temperature": 0.7}, "model_fingerprint": "fp"}) + "\n" for r in ROWS))
    return path


def test_judge_suggestions_are_precomputed(tmp_path, samples):
    """RewardJudge with hard verdicts over reply length: P(first ≻ second) is 1 when the first
    completion of the pair is longer, 0 when shorter (no equal lengths here)."""
    project = tmp_path / "p"
    assert main(["annotate", "create", "--samples", str(samples), "--project", str(project), "--pairs-per-prompt", "3", "--judge", "test_annotate_cli:reply_length"]) == 0
    store = Store(project)
    items = store.items()
    assert len(items) == 6 and store.meta["judge"] == "reply_length" and store.meta["model_fingerprints"] == ["fp"]
    for it in items:
        first, second = it["completions"]
        assert it["suggestion"] == (1.0 if len(first) > len(second) else 0.0)


def test_ensemble_orders_items(tmp_path, samples):
    """A saved 3-member tiny ensemble: the project's item priorities are the disagreement of the
    members' scores, and the first item handed out is the one they disagree on most."""
    from tether.models import tiny_model_and_tokenizer
    from tether.models.reward_ensemble import RewardEnsemble

    torch.manual_seed(0)
    model, tokenizer = tiny_model_and_tokenizer(seed=3)
    ensemble = RewardEnsemble.create(model, tokenizer, size=3)
    with torch.no_grad():
        for k, m in enumerate(ensemble.members):  # distinct heads, so the members disagree
            m.head.weight.normal_(generator=torch.Generator().manual_seed(k))
    ensemble.save_pretrained(tmp_path / "ens")
    scores = ensemble_member_scores(ensemble, [r["prompt"] for r in ROWS], [r["completions"] for r in ROWS])  # [3, 2, 3]
    mean, _ = ensemble.score([r["prompt"] for r in ROWS for _ in range(3)], [c for r in ROWS for c in r["completions"]])
    assert scores.mean(0).flatten() == pytest.approx(mean.tolist(), abs=1e-5)  # the same rewards as the ensemble's own score

    project = tmp_path / "p"
    assert main(["annotate", "create", "--samples", str(samples), "--project", str(project), "--task", "ranking", "--ensemble", str(tmp_path / "ens")]) == 0
    store = Store(project)
    expected = priorities(scores, "disagreement")
    assert [it["priority"] for it in store.items()] == pytest.approx(expected.tolist(), abs=1e-5)
    first = store.next_item(store.authenticate(store.add_annotator("ann")))
    assert first["item"] == 1 + int(expected.argmax())


def test_export_feeds_rm_train(tmp_path, samples, capsys):
    project = tmp_path / "p"
    assert main(["annotate", "create", "--samples", str(samples), "--project", str(project), "--pairs-per-prompt", "3"]) == 0
    store = Store(project)
    ann = store.authenticate(store.add_annotator("ann"))
    for n in range(6):
        view = store.next_item(ann)
        store.submit(ann, {"item": view["item"], "idempotency_key": f"key-{n:05d}", "choice": ["left", "right", "tie"][n % 3]})
    out = tmp_path / "pairs.jsonl"
    assert main(["annotate", "export", "--project", str(project), "--output", str(out)]) == 0
    assert "left out 2 (tie)" in capsys.readouterr().err
    assert main(["rm", "train", "--model", "tiny", "--data", str(out), "--output", str(tmp_path / "rm"), "train.max_steps=1", "train.batch_size=2", "train.micro_batch_size=2"]) == 0
    assert (tmp_path / "rm" / "model").is_dir()


def test_cli_errors_name_the_problem(tmp_path, samples, capsys):
    project = tmp_path / "p"
    assert main(["annotate", "create", "--samples", str(samples), "--project", str(project), "--overlap", "0"]) == 1
    assert "--overlap" in capsys.readouterr().err
    assert main(["annotate", "create", "--samples", str(samples), "--project", str(project)]) == 0
    assert main(["annotate", "create", "--samples", str(samples), "--project", str(project)]) == 1
    assert "already there" in capsys.readouterr().err
    assert main(["annotate", "add-annotator", "ann", "--project", str(project)]) == 0
    assert "#token=" in capsys.readouterr().out
    assert main(["annotate", "add-annotator", "ann", "--project", str(project)]) == 1
    assert "already exists" in capsys.readouterr().err
    assert main(["annotate", "export", "--project", str(tmp_path / "none"), "--output", str(tmp_path / "x.jsonl")]) == 1
