"""Rows (dicts read from a file) -> typed records, with validation that names file, line and field.

Accepted fields, by kind (``kind="auto"`` tells them apart by the fields present, in this order):

- preference: ``chosen`` and ``rejected``, with ``prompt`` (text or chat messages) and optional
  ``margin``. ``chosen``/``rejected`` are reply text, or chat-message lists that either hold only
  the assistant reply or repeat the prompt first. Without a ``prompt`` field, ``chosen`` and
  ``rejected`` are whole transcripts (chat-message lists, or Anthropic HH-RLHF text
  ``"\\n\\nHuman: ...\\n\\nAssistant: ..."``) whose shared turns are the prompt.
- ranking: ``prompt`` and ``completions`` (best first), or ``completions`` with ``scores`` (any
  order; sorted by score, highest first), or ``completions`` as objects holding a reply and its
  score, as UltraFeedback gives them (``tether.data.rankings`` has the details; ties stay ties).
- unpaired: ``prompt``, ``completion`` and ``label`` (true/false, 1/0, "true"/"false", "good"/"bad",
  "yes"/"no").
- demonstration: ``prompt`` and ``completion``; or ``messages``, a chat whose last turn is the
  assistant's reply (the turns before it are the prompt).
- prompt: ``prompt`` alone, or ``messages`` ending with a user turn. Asked for explicitly
  (``kind="prompt"``), any of the kinds above gives its prompts: ``prompt``, else ``messages``
  without a final assistant turn, else the shared turns of ``chosen``/``rejected``.

``completion`` also goes by ``response`` or ``output`` (for demonstrations and unpaired rows), the
names common instruction data sets use. A plain-text prompt becomes one user message.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from enum import Enum
from functools import partial

from tether.data.errors import DataError
from tether.data.fields import (
    COMPLETION_FIELDS,
    Row,
    chat_messages,
    check_prompt,
    completion_field,
    is_hh_transcript,
    nonempty_reply,
    parse_hh_transcript,
    read_label,
    read_number,
    read_prompt,
    read_reply,
    split_transcripts,
)
from tether.data.rankings import SHAPES as RANKING_SHAPES
from tether.data.rankings import parse_ranking
from tether.data.records import (
    Demonstration,
    LoadedRecords,
    PreferencePair,
    Prompt,
    Record,
    Source,
    UnpairedExample,
)

__all__ = ["Kind", "accepted_shapes", "detect_kind", "is_hh_transcript", "normalize_rows", "parse_hh_transcript", "parse_kind"]


class Kind(str, Enum):
    DEMONSTRATION = "demonstration"
    PREFERENCE = "preference"
    RANKING = "ranking"
    UNPAIRED = "unpaired"
    PROMPT = "prompt"


KIND_NAMES = {**{k.value: k for k in Kind}, **{k.value + "s": k for k in Kind}, "pairs": Kind.PREFERENCE}

# ---- one parser per kind ---------------------------------------------------------------------------


def _demonstration(row: Row) -> Demonstration:
    if row.has("messages") and not row.has("prompt"):
        messages = chat_messages(row, row.get("messages"), "messages")
        if len(messages) < 2 or messages[-1]["role"] != "assistant":
            last = messages[-1]["role"] if messages else "none"
            raise row.error("messages", f"need a prompt then the assistant's reply as the last turn (last role: {last})")
        prompt = check_prompt(row, messages[:-1], "messages")
        return Demonstration(prompt, nonempty_reply(row, messages[-1]["content"], "messages"), row.source)
    prompt = read_prompt(row)
    field = completion_field(row)
    return Demonstration(prompt, read_reply(row, row.require(field), field, prompt), row.source)


def _preference(row: Row) -> PreferencePair:
    if row.has("prompt"):
        prompt = read_prompt(row)
        chosen = read_reply(row, row.require("chosen"), "chosen", prompt)
        rejected = read_reply(row, row.require("rejected"), "rejected", prompt)
    else:
        prompt, chosen, rejected = split_transcripts(row)
    if chosen == rejected:
        raise row.error("rejected", "identical to chosen")
    margin = read_number(row, row.get("margin"), "margin") if row.has("margin") else None
    return PreferencePair(prompt, chosen, rejected, row.source, margin)


def _unpaired(row: Row) -> UnpairedExample:
    prompt = read_prompt(row)
    field = completion_field(row)
    completion = read_reply(row, row.require(field), field, prompt)
    return UnpairedExample(prompt, completion, read_label(row), row.source)


def _prompt_only(row: Row) -> Prompt:
    if row.has("prompt"):
        return Prompt(read_prompt(row), row.source)
    if row.has("messages"):
        messages = chat_messages(row, row.get("messages"), "messages")
        if messages and messages[-1]["role"] == "assistant":
            messages = messages[:-1]
        return Prompt(check_prompt(row, messages, "messages"), row.source)
    if row.has("chosen"):
        return Prompt(split_transcripts(row)[0], row.source)
    raise row.error("prompt", f"missing field (row has: {', '.join(map(str, row.fields)) or 'no fields'})")


PARSERS: dict[Kind, Callable[[Row], Record]] = {
    Kind.DEMONSTRATION: _demonstration,
    Kind.PREFERENCE: _preference,
    Kind.RANKING: parse_ranking,
    Kind.UNPAIRED: _unpaired,
    Kind.PROMPT: _prompt_only,
}

# Checked in order: the first whose fields are present decides a row's kind.
DETECTORS: list[tuple[Kind, Callable[[Row], bool]]] = [
    (Kind.PREFERENCE, lambda row: row.has("chosen") or row.has("rejected")),
    (Kind.RANKING, lambda row: row.has("completions")),
    (Kind.UNPAIRED, lambda row: row.has("label")),
    (Kind.DEMONSTRATION, lambda row: any(row.has(name) for name in COMPLETION_FIELDS) or _ends_with_reply(row.get("messages"))),
    (Kind.PROMPT, lambda row: row.has("prompt") or row.has("messages")),
]


def _ends_with_reply(messages) -> bool:
    return isinstance(messages, list) and bool(messages) and isinstance(messages[-1], dict) and messages[-1].get("role") == "assistant"


def detect_kind(fields: dict) -> Kind | None:
    """The record kind a row's fields spell, or None."""
    row = Row(Source("", 0), fields)
    return next((kind for kind, matches in DETECTORS if matches(row)), None)


def parse_kind(kind: str | Kind) -> Kind | None:
    """``Kind`` for a name ("preference", "preferences", ...); None for "auto"."""
    if isinstance(kind, Kind):
        return kind
    if kind == "auto":
        return None
    if kind not in KIND_NAMES:
        raise ValueError(f"unknown record kind {kind!r}; expected auto, {', '.join(k.value for k in Kind)}")
    return KIND_NAMES[kind]


# The shapes each kind accepts, by their fields: what an unrecognised row is told.
SHAPES: dict[Kind, tuple[str, ...]] = {
    Kind.PREFERENCE: ("prompt+chosen+rejected (optional margin)", "chosen+rejected as whole conversations sharing their prompt"),
    Kind.RANKING: RANKING_SHAPES,
    Kind.UNPAIRED: ("prompt+completion+label (completion also as response or output)",),
    Kind.DEMONSTRATION: ("prompt+completion (or response, output)", "messages ending with the assistant's reply"),
    Kind.PROMPT: ("prompt alone", "messages ending with a user turn"),
}


def accepted_shapes() -> str:
    """Every accepted row shape, by kind and fields, on one line."""
    return "; ".join(f"{kind.value}: {' | '.join(shapes)}" for kind, shapes in SHAPES.items())


def _file_kind(rows: list[tuple[Source, dict | DataError]]) -> tuple[Kind | None, int | None]:
    """The kind of the first row that has replies (else of the first prompt-only row), and its
    line. A prompt-only row does not decide, so a demonstration file whose first row lacks its
    completion is still a demonstration file, and that row's error names the missing field."""
    first_prompt = None
    for source, fields in rows:
        kind = detect_kind(fields) if isinstance(fields, dict) else None
        if kind is not None and kind != Kind.PROMPT:
            return kind, source.line
        if kind == Kind.PROMPT and first_prompt is None:
            first_prompt = (kind, source.line)
    return first_prompt or (None, None)


def normalize_rows(
    rows: Iterable[tuple[Source, dict | DataError]],
    path: str,
    kind: str | Kind = "auto",
    on_error: str = "raise",
    score_key: str | None = None,
) -> LoadedRecords:
    """Typed records from reader rows. ``on_error="raise"`` raises the first ``DataError``;
    ``"skip"`` leaves bad rows out and lists their errors in ``skipped``. Under ``kind="auto"``
    the first row with replies fixes the kind (see ``_file_kind``); a row of another kind is an
    error (one file holds one kind). ``score_key``: the field of a ranking's completion objects
    that holds the score (see ``tether.data.rankings``); an error for any other kind."""
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    rows = list(rows)
    if not rows:
        raise DataError(path, None, None, "no records in this file")
    fixed = parse_kind(kind)
    fixed_by_line = None
    if fixed is None:
        fixed, fixed_by_line = _file_kind(rows)
    parser = PARSERS[fixed] if fixed is not None else None
    if score_key is not None:
        if fixed not in (Kind.RANKING, None):
            raise DataError(path, fixed_by_line, None, f"data.score_key={score_key!r} applies to rankings, but this file holds {fixed.value} records")
        parser = partial(parse_ranking, score_key=score_key)
    records: list[Record] = []
    skipped: list[DataError] = []
    for source, fields in rows:
        try:
            if isinstance(fields, DataError):
                raise fields
            row = Row(source, fields)
            if fixed is None or fixed_by_line is not None:  # kind="auto": check the row against the file's kind
                detected = detect_kind(fields)
                if detected is None:
                    raise row.error(
                        None,
                        f"cannot tell what kind of record this is: its fields ({', '.join(map(str, fields)) or 'none'}) "
                        f"match no accepted shape. Accepted: {accepted_shapes()}",
                    )
                if detected != fixed and detected != Kind.PROMPT:
                    raise row.error(
                        None,
                        f"looks like a {detected.value} record, but line {fixed_by_line} made this a file of "
                        f"{fixed.value} records; one file holds one kind",
                    )
                # A prompt-only row in a file of another kind falls through: the parser names the missing field.
            records.append(parser(row))
        except DataError as err:
            if on_error == "raise":
                raise
            skipped.append(err)
    return LoadedRecords(records, fixed.value if fixed is not None else "unknown", skipped)
