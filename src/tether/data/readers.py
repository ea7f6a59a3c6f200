"""Read rows from data files: JSON, JSONL, CSV, Parquet, and Hugging Face datasets saved to disk.

``read_rows(path)`` yields ``(Source, row)`` pairs where ``row`` is either a dict of the
row's fields or a ``DataError`` for a row that could not be read (bad JSON on one JSONL
line, bytes that are not UTF-8, an array element that is not an object). Yielding the
error instead of raising it lets the caller skip that row and go on reading; problems
with the whole file (missing, unknown format, unparseable JSON document) raise.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from tether.data.errors import DataError
from tether.data.records import Source

Row = tuple[Source, "dict | DataError"]

BUNDLED_PREFIX = "bundled:"
BUNDLED_DIR = Path(__file__).resolve().parent / "bundled"


def bundled_path(name: str) -> Path:
    """The path of a bundled data file, by name: "demonstrations", "preferences", "rankings",
    "unpaired" or "review_prompts" (a trailing ".jsonl" is accepted too)."""
    stem = name[: -len(".jsonl")] if name.endswith(".jsonl") else name
    path = BUNDLED_DIR / f"{stem}.jsonl"
    if not path.is_file():
        available = ", ".join(sorted(p.stem for p in BUNDLED_DIR.glob("*.jsonl")))
        raise DataError(f"{BUNDLED_PREFIX}{name}", None, None, f"no bundled data set of that name; available: {available}")
    return path


def resolve_path(path: str | os.PathLike) -> Path:
    """A filesystem path for ``path``, expanding ``bundled:<name>``."""
    text = str(path)
    if text.startswith(BUNDLED_PREFIX):
        return bundled_path(text[len(BUNDLED_PREFIX) :])
    return Path(text).expanduser()


def _decode_error_line(data: bytes, err: UnicodeDecodeError) -> tuple[int, str]:
    """1-based line holding the first undecodable byte, and a description of that byte."""
    line = data.count(b"\n", 0, err.start) + 1
    column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
    return line, f"bytes are not valid UTF-8 (byte 0x{data[err.start]:02x} at column {column})"


def _decode_whole(path: Path, data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")  # -sig: tolerate the byte-order mark some editors write
    except UnicodeDecodeError as err:
        line, reason = _decode_error_line(data, err)
        raise DataError(str(path), line, None, reason) from None


def _as_row(source: Source, value) -> dict | DataError:
    if isinstance(value, dict):
        return value
    return DataError(source.path, source.line, None, f"expected a JSON object, got {_type_name(value)}")


def _type_name(value) -> str:
    return {list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number"}.get(
        type(value), "null" if value is None else type(value).__name__
    )


def read_jsonl(path: Path, split: str | None = None) -> Iterator[Row]:
    """One JSON object per line; blank lines are allowed. Each line decodes on its own so a
    bad byte or bad JSON names its line and spoils only that row."""
    data = path.read_bytes()
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]  # byte-order mark
        source = Source(str(path), number)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            column = err.start + 1
            yield source, DataError(str(path), number, None, f"bytes are not valid UTF-8 (byte 0x{raw[err.start]:02x} at column {column})")
            continue
        if not text.strip():
            continue
        try:
            value = json.loads(text)
        except json.JSONDecodeError as err:
            yield source, DataError(str(path), number, None, f"invalid JSON: {err.msg} (column {err.colno})")
            continue
        yield source, _as_row(source, value)


def read_json(path: Path, split: str | None = None) -> Iterator[Row]:
    """A top-level array of objects, or an object with exactly one list field ({"data": [...]}).
    Row ``i`` of the array gets line ``i + 1`` (the record's position, not a text line)."""
    text = _decode_whole(path, path.read_bytes())
    try:
        document = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(str(path), err.lineno, None, f"invalid JSON: {err.msg} (column {err.colno})") from None
    if isinstance(document, dict):
        list_fields = [key for key, value in document.items() if isinstance(value, list)]
        if len(list_fields) != 1:
            raise DataError(
                str(path), None, None,
                "expected a JSON array of records, or an object with exactly one list field (such as "
                f'{{"data": [...]}}); found list fields: {list_fields or "none"}',
            )
        document = document[list_fields[0]]
    if not isinstance(document, list):
        raise DataError(str(path), None, None, f"expected a JSON array of records, got {_type_name(document)}")
    for index, value in enumerate(document):
        source = Source(str(path), index + 1)
        yield source, _as_row(source, value)


# Columns whose CSV cells may hold a JSON list (of completions or scores) rather than text.
_LIST_COLUMNS = frozenset({"completions", "scores", "messages"})


def _csv_cell(column: str, text: str):
    """A CSV cell as text, or as the JSON value it spells when that value is structured data a
    record needs: a chat-message list in any column, or any list in a list column. Everything
    else stays text, so a completion that merely looks like JSON ("[1, 2, 3]") is kept as written."""
    stripped = text.strip()
    if not stripped or stripped[0] not in "[{" or stripped[-1] not in "]}":
        return text
    try:
        value = json.loads(stripped)
    except json.JSONDecodeError:
        return text
    looks_like_chat = isinstance(value, list) and value and all(isinstance(m, dict) and "role" in m for m in value)
    if looks_like_chat or (column in _LIST_COLUMNS and isinstance(value, list)):
        return value
    if isinstance(value, dict) and "role" in value:
        return value
    return text


def read_csv(path: Path, split: str | None = None) -> Iterator[Row]:
    """Comma-separated (``.tsv``: tab-separated) with a header row. Every cell is text except
    JSON-looking chat-message lists and lists in "completions"/"scores"/"messages" columns.
    A row's line is the physical line it starts on (header = line 1)."""
    text = _decode_whole(path, path.read_bytes())
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as err:
        raise DataError(str(path), 1, None, f"unreadable CSV header: {err}") from None
    while True:
        start_line = reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            raise DataError(str(path), start_line, None, f"unreadable CSV: {err}") from None
        if not any(cell.strip() for cell in cells):
            continue  # blank line
        source = Source(str(path), start_line)
        if len(cells) != len(header):
            yield source, DataError(str(path), start_line, None, f"row has {len(cells)} cells but the header has {len(header)}")
            continue
        yield source, {column: _csv_cell(column, cell) for column, cell in zip(header, cells)}


def read_parquet(path: Path, split: str | None = None) -> Iterator[Row]:
    """A Parquet table; nested list/struct columns come back as Python lists and dicts."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises several types (ArrowInvalid, OSError) for a bad file
        raise DataError(str(path), None, None, f"unreadable Parquet file: {err}") from None
    for index, value in enumerate(table.to_pylist()):
        yield Source(str(path), index + 1), value


def read_saved_dataset(path: Path, split: str | None = "train") -> Iterator[Row]:
    """A directory written by ``datasets.Dataset.save_to_disk`` (or a ``DatasetDict``'s, from
    which ``split`` is taken)."""
    try:
        import datasets
    except ImportError:
        raise DataError(
            str(path), None, None,
            "reading a saved Hugging Face dataset needs the 'datasets' package (pip install datasets)",
        ) from None
    try:
        loaded = datasets.load_from_disk(str(path))
    except FileNotFoundError as err:
        raise DataError(
            str(path), None, None,
            f"a directory, but not a dataset saved with datasets' save_to_disk ({err})",
        ) from None
    if isinstance(loaded, datasets.DatasetDict):
        split = split or "train"
        if split not in loaded:
            raise DataError(str(path), None, None, f"no split '{split}' in this dataset; splits: {', '.join(loaded)}")
        loaded = loaded[split]
    for index, value in enumerate(loaded):
        yield Source(str(path), index + 1), dict(value)


READERS: dict[str, Callable[[Path, str | None], Iterator[Row]]] = {
    ".jsonl": read_jsonl,
    ".ndjson": read_jsonl,
    ".json": read_json,
    ".csv": read_csv,
    ".tsv": read_csv,
    ".parquet": read_parquet,
    ".pq": read_parquet,
}


def read_rows(path: str | os.PathLike, split: str | None = "train") -> Iterator[Row]:
    """Rows of a data file or saved dataset directory; see the module docstring.

    Raises ``DataError`` for a missing file or an unknown format before yielding anything.
    """
    resolved = resolve_path(path)
    if resolved.is_dir():
        return read_saved_dataset(resolved, split)
    if not resolved.exists():
        raise DataError(str(path), None, None, "no such file or directory")
    reader = READERS.get(resolved.suffix.lower())
    if reader is None:
        accepted = ", ".join(READERS)
        raise DataError(
            str(path), None, None,
            f"unknown file type '{resolved.suffix or '(no extension)'}'; accepted: {accepted}, "
            "or a directory written by datasets' save_to_disk",
        )
    return reader(resolved, split)
