"""Rankings given as objects (reply + score, unsorted), UltraFeedback's layout, ties, and the message
for a row of no known shape."""

import json

import pytest

from tether.data import DataError, Ranking, load_records
from tether.data.rankings import resolve_ties


def _write(tmp_path, rows, name="r.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _ultrafeedback_completion(response, overall, helpfulness, fine_grained):
    """One completion as openbmb/UltraFeedback stores it (ratings are strings there)."""
    aspects = {"helpfulness": helpfulness, "honesty": "3", "instruction_following": "4", "truthfulness": "5"}
    return {
        "annotations": {name: {"Rating": rating, "Rationale": "..."} for name, rating in aspects.items()},
        "critique": "...",
        "custom_system_prompt": "",
        "fine-grained_score": fine_grained,
        "model": "some-model",
        "overall_score": overall,
        "principle": "helpfulness",
        "response": response,
    }


ULTRAFEEDBACK_ROW = {
    "source": "evol_instruct",
    "instruction": "Name a prime.",
    "models": ["a", "b", "c"],
    "completions": [
        _ultrafeedback_completion("Nine.", 3.0, "1", 2.25),
        _ultrafeedback_completion("Seven.", 8.5, "4", 4.5),
        _ultrafeedback_completion("Two, the only even prime.", 7.0, "5", 4.75),
    ],
}


def test_objects_with_text_and_score_sorted_best_first(tmp_path):
    row = {"prompt": "p", "completions": [{"text": "ok", "score": 5}, {"text": "best", "score": 7.5}, {"text": "worst", "score": -1}]}
    ranking = load_records(_write(tmp_path, [row])).records[0]
    assert isinstance(ranking, Ranking)
    assert ranking.prompt == [{"role": "user", "content": "p"}]
    assert ranking.completions == ["best", "ok", "worst"] and ranking.scores == [7.5, 5.0, -1.0]


def test_ultrafeedback_overall_score_and_chosen_aspect(tmp_path):
    """overall_score orders Seven (8.5) > Two (7.0) > Nine (3.0); the helpfulness Rating (strings
    "4", "5", "1") orders Two > Seven > Nine; fine-grained_score (a key with a dash) 4.75 > 4.5 > 2.25."""
    path = _write(tmp_path, [ULTRAFEEDBACK_ROW])
    overall = load_records(path).records[0]
    assert overall.prompt == [{"role": "user", "content": "Name a prime."}]
    assert overall.completions == ["Seven.", "Two, the only even prime.", "Nine."] and overall.scores == [8.5, 7.0, 3.0]
    helpful = load_records(path, score_key="annotations.helpfulness.Rating").records[0]
    assert helpful.completions == ["Two, the only even prime.", "Seven.", "Nine."] and helpful.scores == [5.0, 4.0, 1.0]
    fine = load_records(path, score_key="fine-grained_score").records[0]
    assert fine.completions == ["Two, the only even prime.", "Seven.", "Nine."]


def test_tied_scores_stay_visible_and_each_policy_does_what_it_says(tmp_path):
    """Scores [5, 9, 5, 1] -> sorted 9, 5 (a), 5 (c), 1 with file order inside the tie. drop keeps
    the first reply of each score: [b, a, d]; a ranking whose replies all tie is left with one and
    skipped; file_order keeps all four; error names the tied row's line."""
    rows = [
        {"prompt": "p", "completions": [{"text": "a", "score": 5}, {"text": "b", "score": 9}, {"text": "c", "score": 5}, {"text": "d", "score": 1}]},
        {"prompt": "q", "completions": [{"text": "x", "score": 2}, {"text": "y", "score": 2}]},
        {"prompt": "r", "completions": [{"text": "u", "score": 1}, {"text": "v", "score": 2}]},
    ]
    records = load_records(_write(tmp_path, rows)).records
    assert records[0].completions == ["b", "a", "c", "d"] and records[0].scores == [9.0, 5.0, 5.0, 1.0]

    kept, report = resolve_ties(records, "drop", "r.jsonl")
    assert [r.completions for r in kept] == [["b", "a", "d"], ["v", "u"]]
    assert len(report) == 1 and "2 rankings have tied scores" in report[0] and "dropping 2 replies and 1 rankings" in report[0]

    same, report = resolve_ties(records, "file_order", "r.jsonl")
    assert same is records and "file_order" in report[0]

    with pytest.raises(DataError) as info:
        resolve_ties(records, "error", "r.jsonl")
    assert (info.value.line, info.value.field) == (1, "scores")

    untied = [records[2]]
    assert resolve_ties(untied, "error", "r.jsonl") == (untied, [])  # nothing tied: nothing to say


@pytest.mark.parametrize(
    "completion, field, reason",
    [
        ({"score": 3}, "completions[1].text", "missing the reply"),
        ({"text": "b"}, "completions[1].score", "missing score"),
        ({"text": "b", "score": "high"}, "completions[1].score", "expected a number"),
    ],
)
def test_malformed_object_names_file_line_and_field(tmp_path, completion, field, reason):
    rows = [{"prompt": "p", "completions": [{"text": "a", "score": 1}, {"text": "z", "score": 2}]}, {"prompt": "p", "completions": [{"text": "a", "score": 1}, completion]}]
    path = _write(tmp_path, rows)
    with pytest.raises(DataError) as info:
        load_records(path)
    assert (info.value.path, info.value.line, info.value.field) == (str(path), 2, field)
    assert reason in info.value.reason and str(info.value).startswith(f"{path}:2:")
    assert "role" not in str(info.value)  # an object is not mistaken for a chat message


def test_missing_aspect_rating_names_the_path(tmp_path):
    row = json.loads(json.dumps(ULTRAFEEDBACK_ROW))
    del row["completions"][2]["annotations"]["helpfulness"]
    with pytest.raises(DataError) as info:
        load_records(_write(tmp_path, [row]), score_key="annotations.helpfulness.Rating")
    assert info.value.field == "completions[2].annotations.helpfulness.Rating" and "data.score_key" in info.value.reason


def test_mixed_and_misapplied_score_layouts_are_errors(tmp_path):
    mixed = {"prompt": "p", "completions": ["a", {"text": "b", "score": 1}]}
    with pytest.raises(DataError, match="mixes plain replies with scored objects"):
        load_records(_write(tmp_path, [mixed]))
    both = {"prompt": "p", "completions": [{"text": "a", "score": 1}, {"text": "b", "score": 2}], "scores": [1, 2]}
    with pytest.raises(DataError, match="carry their own scores"):
        load_records(_write(tmp_path, [both]))
    plain = {"prompt": "p", "completions": ["a", "b"]}
    with pytest.raises(DataError, match="applies to completions given as objects"):
        load_records(_write(tmp_path, [plain]), score_key="score")
    pairs = {"prompt": "p", "chosen": "a", "rejected": "b"}
    with pytest.raises(DataError, match="applies to rankings"):
        load_records(_write(tmp_path, [pairs]), score_key="score")


def test_row_of_no_known_shape_lists_the_accepted_shapes(tmp_path):
    path = _write(tmp_path, [{"question": "p", "answers": [{"body": "a", "votes": 3}]}])
    with pytest.raises(DataError) as info:
        load_records(path)
    message = str(info.value)
    assert message.startswith(f"{path}:1:") and "question, answers" in message and "role" not in message
    for shape in ("prompt+chosen+rejected", "prompt+completions+scores", "completions as objects", "prompt+completion+label", "messages ending with a user turn"):
        assert shape in message



def test_training_data_reports_ties_and_drops_them(tmp_path):
    """prepare_data (what rm train and dpo call) applies data.ties and says so: rows 1 and 2 tie,
    row 3 does not; under drop, row 2 ([2, 2]) is left with one reply and goes."""
    from tether.config import DataConfig
    from tether.models.tiny import tiny_tokenizer
    from tether.trainers.prepare import prepare_data

    rows = [
        {"prompt": "p", "completions": [{"text": "a", "score": 5}, {"text": "b", "score": 9}, {"text": "c", "score": 5}]},
        {"prompt": "q", "completions": [{"text": "x", "score": 2}, {"text": "y", "score": 2}]},
        {"prompt": "r", "completions": [{"text": "u", "score": 1}, {"text": "v", "score": 2}]},
    ]
    cfg = DataConfig(path=str(_write(tmp_path, rows)), eval_fraction=0.0)
    data = prepare_data(tiny_tokenizer(), cfg, "ranking", seed=0)
    assert [len(e.sequences) for e in data.train] == [2, 2]
    assert any("2 rankings have tied scores" in line and "data.ties=drop" in line for line in data.report)
    with pytest.raises(DataError, match="data.ties=error"):
        prepare_data(tiny_tokenizer(), DataConfig(path=cfg.path, eval_fraction=0.0, ties="error"), "ranking", seed=0)


def test_data_check_reads_scored_objects_and_counts_ties(tmp_path, capsys):
    from tether.cli import main

    row = json.loads(json.dumps(ULTRAFEEDBACK_ROW))
    row["completions"][2]["annotations"]["helpfulness"]["Rating"] = "4"  # ties Seven (4) under helpfulness
    path = _write(tmp_path, [ULTRAFEEDBACK_ROW, row])
    assert main(["data", "check", str(path)]) == 0
    assert "2 ranking records, 0 malformed" in capsys.readouterr().out
    assert main(["data", "check", str(path), "--score-key", "annotations.helpfulness.Rating"]) == 0
    assert f"1 rankings have tied scores (first at {path}:2)" in capsys.readouterr().out
