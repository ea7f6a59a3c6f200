"""Rows -> typed records: kind detection, HH-RLHF transcripts, validation errors naming file:line:field."""

import json

import pytest

from tether.data import (
    DataError,
    Demonstration,
    PreferencePair,
    Prompt,
    Ranking,
    UnpairedExample,
    load_records,
    parse_hh_transcript,
)

USER_HI = [{"role": "user", "content": "hi"}]


def _write(tmp_path, rows, name="d.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _load(tmp_path, rows, **kw):
    return load_records(_write(tmp_path, rows), **kw)


@pytest.mark.parametrize(
    "row, kind, record_type",
    [
        ({"prompt": "p", "completion": "c"}, "demonstration", Demonstration),
        ({"prompt": "p", "response": "c"}, "demonstration", Demonstration),
        ({"prompt": "p", "output": "c"}, "demonstration", Demonstration),
        ({"messages": USER_HI + [{"role": "assistant", "content": "c"}]}, "demonstration", Demonstration),
        ({"prompt": "p", "chosen": "a", "rejected": "b"}, "preference", PreferencePair),
        ({"prompt": "p", "completions": ["a", "b"]}, "ranking", Ranking),
        ({"prompt": "p", "completion": "c", "label": True}, "unpaired", UnpairedExample),
        ({"prompt": "p"}, "prompt", Prompt),
        ({"messages": USER_HI}, "prompt", Prompt),
    ],
)
def test_kind_detection(tmp_path, row, kind, record_type):
    loaded = _load(tmp_path, [row, row])
    assert loaded.kind == kind
    assert all(type(r) is record_type for r in loaded.records) and len(loaded.records) == 2
    assert loaded.records[1].source.line == 2


def test_plain_prompt_becomes_user_message(tmp_path):
    record = _load(tmp_path, [{"prompt": "p", "completion": "c"}]).records[0]
    assert record.prompt == [{"role": "user", "content": "p"}] and record.completion == "c"


def test_messages_demonstration_splits_last_assistant_turn(tmp_path):
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
        {"role": "assistant", "content": "d", "name": "bot"},  # extra keys are dropped
    ]
    record = _load(tmp_path, [{"messages": messages}]).records[0]
    assert record.prompt == [{"role": m["role"], "content": m["content"]} for m in messages[:4]]
    assert record.completion == "d"


def test_hh_rlhf_transcript_parsing():
    text = "\n\nHuman: What is 2+2?\n\nAssistant: 4.\n\nHuman: And 3+3?\n\nAssistant: 6."
    assert parse_hh_transcript(text) == [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4."},
        {"role": "user", "content": "And 3+3?"},
        {"role": "assistant", "content": "6."},
    ]


def test_hh_rlhf_pair_without_prompt_uses_shared_turns(tmp_path):
    shared = "\n\nHuman: How do I boil an egg?\n\nAssistant: Put it in water.\n\nHuman: For how long?"
    row = {"chosen": shared + "\n\nAssistant: About nine minutes for a hard yolk.", "rejected": shared + "\n\nAssistant: Until done."}
    pair = _load(tmp_path, [row]).records[0]
    assert pair.prompt == [
        {"role": "user", "content": "How do I boil an egg?"},
        {"role": "assistant", "content": "Put it in water."},
        {"role": "user", "content": "For how long?"},
    ]
    assert pair.chosen == "About nine minutes for a hard yolk." and pair.rejected == "Until done."


def test_hh_prompt_field_with_text_or_transcript_replies(tmp_path):
    """HH-derived sets store the prompt as "...\n\nAssistant:" with an empty reply slot, and the
    replies either as bare text or as the whole transcript again."""
    prompt = "\n\nHuman: Name a prime.\n\nAssistant:"
    rows = [
        {"prompt": prompt, "chosen": "Seven.", "rejected": "Nine."},
        {"prompt": prompt, "chosen": prompt + " Seven.", "rejected": prompt + " Nine."},
    ]
    for pair in _load(tmp_path, rows).records:
        assert (pair.prompt, pair.chosen, pair.rejected) == ([{"role": "user", "content": "Name a prime."}], "Seven.", "Nine.")


def test_chat_message_pair_without_prompt_and_with_prompt(tmp_path):
    chosen = USER_HI + [{"role": "assistant", "content": "Hello!"}]
    rejected = USER_HI + [{"role": "assistant", "content": "What?"}]
    rows = [
        {"chosen": chosen, "rejected": rejected},  # whole conversations, prompt = shared turns
        {"prompt": USER_HI, "chosen": chosen, "rejected": rejected},  # conversations repeating the prompt
        {"prompt": "hi", "chosen": chosen[-1:], "rejected": rejected[-1:], "margin": 2},  # reply-only message lists
    ]
    pairs = _load(tmp_path, rows).records
    for pair in pairs:
        assert (pair.prompt, pair.chosen, pair.rejected) == (USER_HI, "Hello!", "What?")
    assert [p.margin for p in pairs] == [None, None, 2.0]


def test_ranking_sorted_by_scores_descending(tmp_path):
    row = {"prompt": "p", "completions": ["ok", "best", "worst"], "scores": [0.5, 2, -1]}
    ranking = _load(tmp_path, [row]).records[0]
    assert ranking.completions == ["best", "ok", "worst"]
    assert ranking.scores == [2.0, 0.5, -1.0]


@pytest.mark.parametrize(
    "label, expected",
    [(True, True), (False, False), (1, True), (0, False), ("true", True), ("False", False), ("good", True), ("bad", False)],
)
def test_unpaired_labels(tmp_path, label, expected):
    record = _load(tmp_path, [{"prompt": "p", "completion": "c", "label": label}]).records[0]
    assert record.label is expected


def test_csv_preferences_with_margin_and_labels(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text('prompt,chosen,rejected,margin\n"Say hi",Hi!,Go away,1.5\nq,a,b,\n')
    pairs = load_records(path).records
    assert [p.margin for p in pairs] == [1.5, None]  # an empty optional cell means "not given"


# Each malformed row: (row, field named in the error, words of the reason). Line 2 in every case:
# line 1 is a valid row of the same kind, so the error also shows that good rows are kept.
MALFORMED = [
    ({"prompt": "p"}, "completion", "missing field", {"prompt": "p", "completion": "c"}),
    ({"prompt": 3, "completion": "c"}, "prompt", "expected text or a list of chat messages, got a number", {"prompt": "p", "completion": "c"}),
    ({"prompt": "p", "completion": "  "}, "completion", "empty completion", {"prompt": "p", "completion": "c"}),
    ({"prompt": "", "completion": "c"}, "prompt", "empty prompt", {"prompt": "p", "completion": "c"}),
    ({"prompt": "p", "chosen": "", "rejected": "b"}, "chosen", "empty completion", {"prompt": "p", "chosen": "a", "rejected": "b"}),
    ({"prompt": "p", "chosen": "a", "rejected": ""}, "rejected", "empty completion", {"prompt": "p", "chosen": "a", "rejected": "b"}),
    ({"prompt": "p", "chosen": "same", "rejected": "same"}, "rejected", "identical to chosen", {"prompt": "p", "chosen": "a", "rejected": "b"}),
    ({"prompt": "p", "chosen": "a", "rejected": "b", "margin": "big"}, "margin", "expected a number", {"prompt": "p", "chosen": "a", "rejected": "b"}),
    ({"chosen": "just text", "rejected": "other text"}, "chosen", "HH-RLHF transcript", {"prompt": "p", "chosen": "a", "rejected": "b"}),
    ({"prompt": "p", "completions": ["only one"]}, "completions", "at least 2 completions, got 1", {"prompt": "p", "completions": ["a", "b"]}),
    ({"prompt": "p", "completions": ["a", "b", "a"]}, "completions[2]", "duplicate of completions[0]", {"prompt": "p", "completions": ["a", "b"]}),
    ({"prompt": "p", "completions": ["a", "b"], "scores": [1]}, "scores", "1 scores for 2 completions", {"prompt": "p", "completions": ["a", "b"]}),
    ({"prompt": "p", "completions": "a"}, "completions", "expected a list", {"prompt": "p", "completions": ["a", "b"]}),
    ({"prompt": "p", "completion": "c", "label": "maybe"}, "label", "expected true/false", {"prompt": "p", "completion": "c", "label": 1}),
    ({"prompt": [{"role": "robot", "content": "x"}], "completion": "c"}, "prompt[0].role", "role must be one of", {"prompt": "p", "completion": "c"}),
    ({"prompt": [{"role": "user"}], "completion": "c"}, "prompt[0].content", "missing content", {"prompt": "p", "completion": "c"}),
    ({"prompt": [{"role": "user", "content": 5}], "completion": "c"}, "prompt[0].content", "expected text", {"prompt": "p", "completion": "c"}),
    ({"prompt": [{"role": "assistant", "content": "x"}], "completion": "c"}, "prompt", "must end with a user turn", {"prompt": "p", "completion": "c"}),
    ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": ""}]}, "messages", "empty completion", {"prompt": "p", "completion": "c"}),
    (
        {"chosen": USER_HI + [{"role": "assistant", "content": "a"}], "rejected": [{"role": "user", "content": "bye"}, {"role": "assistant", "content": "b"}]},
        "rejected", "differ before their final assistant turn", {"prompt": "p", "chosen": "a", "rejected": "b"},
    ),
]


@pytest.mark.parametrize("row, field, reason, good", MALFORMED, ids=[f"{m[1]}:{m[2][:24]}" for m in MALFORMED])
def test_malformed_row_names_file_line_field_reason(tmp_path, row, field, reason, good):
    path = _write(tmp_path, [good, row])
    with pytest.raises(DataError) as info:
        load_records(path)
    err = info.value
    assert (err.path, err.line, err.field) == (str(path), 2, field)
    assert reason in err.reason
    assert str(err).startswith(f"{path}:2: field '{field}': ")

    loaded = load_records(path, on_error="skip")  # the same row, skipped and reported
    assert len(loaded.records) == 1 and loaded.records[0].source.line == 1
    assert [(e.line, e.field) for e in loaded.skipped] == [(2, field)]


def test_error_message_format():
    err = DataError("data/prefs.jsonl", 12, "chosen", "empty completion")
    assert str(err) == "data/prefs.jsonl:12: field 'chosen': empty completion"
    assert str(DataError("x.csv", None, None, "no such file or directory")) == "x.csv: no such file or directory"
    import pickle

    assert str(pickle.loads(pickle.dumps(err))) == str(err)


def test_skip_policy_collects_every_bad_row(tmp_path):
    rows = [
        {"prompt": "p1", "chosen": "a", "rejected": "b"},
        {"prompt": "p2", "chosen": "a", "rejected": "a"},
        {"prompt": "p3", "chosen": "a", "rejected": "b"},
        {"prompt": "p4", "chosen": "", "rejected": "b"},
        {"prompt": "p5", "chosen": "a", "rejected": "b"},
    ]
    path = _write(tmp_path, rows)
    path.write_text(path.read_text() + "{not json\n")
    loaded = load_records(path, on_error="skip")
    assert [r.prompt[0]["content"] for r in loaded.records] == ["p1", "p3", "p5"]
    assert [(e.line, e.field) for e in loaded.skipped] == [(2, "rejected"), (4, "chosen"), (6, None)]
    with pytest.raises(DataError) as info:
        load_records(path)  # on_error="raise" stops at the first
    assert info.value.line == 2


def test_mixed_kinds_is_an_error_naming_the_line(tmp_path):
    rows = [{"prompt": "p", "completion": "c"}, {"prompt": "p", "completion": "c"}, {"prompt": "p", "chosen": "a", "rejected": "b"}]
    path = _write(tmp_path, rows)
    with pytest.raises(DataError, match=r":3: looks like a preference record, but line 1 made this a file of demonstration records"):
        load_records(path)


@pytest.mark.parametrize("bad_line", [1, 2])
def test_prompt_only_row_in_a_demonstration_file_names_missing_completion(tmp_path, bad_line):
    """Even as the first row, a prompt-only row does not make the file a prompt file."""
    rows = [{"prompt": "p", "completion": "c"}] * 3
    rows[bad_line - 1] = {"prompt": "p"}
    path = _write(tmp_path, rows)
    with pytest.raises(DataError) as info:
        load_records(path)
    assert (info.value.line, info.value.field, info.value.reason.split(" (")[0]) == (bad_line, "completion", "missing field")
    loaded = load_records(path, on_error="skip")
    assert loaded.kind == "demonstration" and len(loaded.records) == 2 and len(loaded.skipped) == 1


def test_explicit_kind_parses_as_that_kind(tmp_path):
    path = _write(tmp_path, [{"prompt": "p", "chosen": "a", "rejected": "b"}])
    with pytest.raises(DataError, match="field 'completions': missing field"):
        load_records(path, kind="ranking")
    prompts = load_records(path, kind="prompt")  # any kind gives its prompts
    assert prompts.kind == "prompt" and prompts.records[0].prompt == [{"role": "user", "content": "p"}]


def test_unrecognisable_row_and_empty_file(tmp_path):
    path = _write(tmp_path, [{"question": "p", "answer": "c"}])
    with pytest.raises(DataError, match="cannot tell what kind of record"):
        load_records(path)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataError, match="no records"):
        load_records(empty)


BUNDLED = {"demonstrations": ("demonstration", 100), "preferences": ("preference", 120), "rankings": ("ranking", 30), "unpaired": ("unpaired", 80), "review_prompts": ("prompt", 60)}


@pytest.mark.parametrize("name", list(BUNDLED))
def test_bundled_files_load_cleanly(name):
    kind, at_least = BUNDLED[name]
    loaded = load_records(f"bundled:{name}")
    assert loaded.kind == kind and not loaded.skipped and len(loaded.records) >= at_least
    prompts = [r.prompt[0]["content"] for r in loaded.records]
    assert len(set(prompts)) == len(prompts)  # every prompt distinct
    if kind == "unpaired":
        labels = [r.label for r in loaded.records]
        assert 0.4 < sum(labels) / len(labels) < 0.6  # balanced desirable / undesirable
    if kind == "ranking":
        assert all(3 <= len(r.completions) <= 4 for r in loaded.records)
