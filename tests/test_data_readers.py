"""Readers: every format yields the same rows with 1-based sources; bad input names file and line."""

import json

import pytest

from tether.data import DataError, bundled_path, load_records, read_rows

ROWS = [
    {"prompt": "What is 2+2?", "completion": "4"},
    {"prompt": "Name a colour.", "completion": "Blue"},
]


def _rows(path, **kw):
    return [(source.line, row) for source, row in read_rows(path, **kw)]


def test_jsonl_rows_and_lines_skip_blank_lines(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n\n" + json.dumps(ROWS[1]) + "\n")
    # The blank line 2 is skipped, so the second record is on line 3.
    assert _rows(path) == [(1, ROWS[0]), (3, ROWS[1])]


def test_json_array_and_single_list_field_object(tmp_path):
    array = tmp_path / "a.json"
    array.write_text(json.dumps(ROWS))
    wrapped = tmp_path / "w.json"
    wrapped.write_text(json.dumps({"version": 2, "data": ROWS}))
    assert _rows(array) == [(1, ROWS[0]), (2, ROWS[1])]  # line = array index + 1
    assert _rows(wrapped) == _rows(array)


def test_json_object_with_two_list_fields_is_rejected(tmp_path):
    path = tmp_path / "two.json"
    path.write_text(json.dumps({"train": ROWS, "test": ROWS}))
    with pytest.raises(DataError, match="exactly one list field") as info:
        list(read_rows(path))
    assert info.value.path == str(path) and info.value.line is None


def test_json_syntax_error_names_line(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[\n  {"prompt": "a", "completion": "b"},\n  {"prompt": "c" "completion": "d"}\n]')
    with pytest.raises(DataError) as info:
        list(read_rows(path))
    assert info.value.line == 3 and "invalid JSON" in info.value.reason


def test_csv_with_header_json_cells_and_multiline_cell(tmp_path):
    path = tmp_path / "d.csv"
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    import csv

    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["prompt", "completion", "messages"])
        writer.writerow(["line one\nline two", "[1, 2, 3]", json.dumps(messages)])
        writer.writerow(["q", "a", ""])
    rows = _rows(path)
    # Row 1 starts on line 2 (header = line 1) and spans lines 2-3, so row 2 starts on line 4.
    assert [line for line, _ in rows] == [2, 4]
    first = rows[0][1]
    assert first["prompt"] == "line one\nline two"
    assert first["completion"] == "[1, 2, 3]"  # JSON-looking text in a text column stays text
    assert first["messages"] == messages  # a chat-message list is parsed
    assert rows[1][1]["completion"] == "a"


def test_csv_row_with_wrong_cell_count_is_a_row_error(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("prompt,completion\nq,a\nonly-one-cell\n")
    rows = list(read_rows(path))
    assert isinstance(rows[1][1], DataError) and rows[1][1].line == 3


def test_parquet_rows_with_nested_messages(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}, {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}]
    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    assert _rows(path) == [(1, rows[0]), (2, rows[1])]
    loaded = load_records(path)
    assert loaded.kind == "demonstration" and loaded.records[1].completion == "b"


def test_saved_hf_dataset_and_dataset_dict_split(tmp_path):
    datasets = pytest.importorskip("datasets")
    single = tmp_path / "single"
    datasets.Dataset.from_list(ROWS).save_to_disk(str(single))
    assert _rows(single) == [(1, ROWS[0]), (2, ROWS[1])]

    both = tmp_path / "dict"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS), "test": datasets.Dataset.from_list(ROWS[:1])}).save_to_disk(str(both))
    assert len(_rows(both)) == 2  # split defaults to "train"
    assert _rows(both, split="test") == [(1, ROWS[0])]
    with pytest.raises(DataError, match="no split 'validation'.*train"):
        list(read_rows(both, split="validation"))


def test_directory_that_is_not_a_dataset(tmp_path):
    pytest.importorskip("datasets")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="save_to_disk"):
        list(read_rows(tmp_path / "empty"))


def test_jsonl_bad_json_and_bad_utf8_name_their_lines(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(
        json.dumps(ROWS[0]).encode() + b"\n"
        + b'{"prompt": "x", "completion": }\n'
        + b'{"prompt": "caf\xe9", "completion": "y"}\n'  # Latin-1 e-acute: not UTF-8
        + b"[1, 2]\n"
        + json.dumps(ROWS[1]).encode() + b"\n"
    )
    rows = list(read_rows(path))
    errors = [(s.line, r) for s, r in rows if isinstance(r, DataError)]
    assert [line for line, _ in errors] == [2, 3, 4]
    assert "invalid JSON" in errors[0][1].reason
    assert "not valid UTF-8" in errors[1][1].reason and "0xe9" in errors[1][1].reason
    assert "expected a JSON object, got a list" in errors[2][1].reason
    assert str(errors[1][1]).startswith(f"{path}:3: ")
    # The good rows on either side still come through.
    assert [s.line for s, r in rows if not isinstance(r, DataError)] == [1, 5]


def test_csv_bad_utf8_names_line(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes(b"prompt,completion\nq,a\nq2,caf\xe9\n")
    with pytest.raises(DataError) as info:
        list(read_rows(path))
    assert info.value.line == 3 and "UTF-8" in info.value.reason


def test_unknown_extension_lists_accepted_ones(tmp_path):
    path = tmp_path / "d.xlsx"
    path.write_text("x")
    with pytest.raises(DataError) as info:
        read_rows(path)
    message = str(info.value)
    assert ".xlsx" in message and ".jsonl" in message and ".parquet" in message and ".csv" in message


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="no such file") as info:
        load_records(tmp_path / "nope.jsonl")
    assert info.value.path.endswith("nope.jsonl")


def test_bundled_names(tmp_path):
    assert bundled_path("preferences").name == "preferences.jsonl"
    assert bundled_path("preferences.jsonl") == bundled_path("preferences")
    with pytest.raises(DataError, match="available: .*demonstrations"):
        bundled_path("nonexistent")
