"""Rows (dicts read from a file) -> typed records, with validation that names file, line and field.

Accepted fields, by kind (``kind="auto"`` tells them apart by the fields present, in this order):

- preference: ``chosen`` and ``rejected``, with ``prompt`` (text or chat messages) and optional
  ``margin``. ``chosen``/``rejected`` are reply text, or chat-message lists that either hold only
  the assistant reply or repeat the prompt first. Without a ``prompt`` field, ``chosen`` and
  ``rejected`` are whole transcripts (chat-message lists, or Anthropic HH-RLHF text
  ``"\\n\\nHuman: ...\\n\\nAssistant: ..."``) whose shared turns are the prompt.
- ranking: ``prompt`` and ``completions`` (best first), or ``completions`` with ``scores`` (any
  order; sorted by score, highest first).
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

import math
import re
from collections.abc import Callable, Iterable
from enum import Enum

from tether.data.errors import DataError
from tether.data.records import (
    ROLES,
    Demonstration,
    LoadedRecords,
    Message,
    PreferencePair,
    Prompt,
    Ranking,
    Record,
    Source,
    UnpairedExample,
)


class Kind(str, Enum):
    DEMONSTRATION = "demonstration"
    PREFERENCE = "preference"
    RANKING = "ranking"
    UNPAIRED = "unpaired"
    PROMPT = "prompt"


KIND_NAMES = {**{k.value: k for k in Kind}, **{k.value + "s": k for k in Kind}, "pairs": Kind.PREFERENCE}

COMPLETION_FIELDS = ("completion", "response", "output")  # first one present wins


class _Row:
    """A row's fields and its source; ``get`` treats null and (for CSV) empty optional cells as absent."""

    def __init__(self, source: Source, fields: dict):
        self.source = source
        self.fields = fields

    def error(self, field: str | None, reason: str) -> DataError:
        return DataError(self.source.path, self.source.line, field, reason)

    def get(self, key: str):
        value = self.fields.get(key)
        return None if value is None or (isinstance(value, str) and key in ("margin", "scores") and not value.strip()) else value

    def has(self, key: str) -> bool:
        return self.get(key) is not None

    def require(self, key: str):
        if not self.has(key):
            raise self.error(key, f"missing field (row has: {', '.join(map(str, self.fields)) or 'no fields'})")
        return self.get(key)


def _describe(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


# ---- chat messages ---------------------------------------------------------------------------------


def _messages(row: _Row, value, field: str) -> list[Message]:
    """A validated chat-message list, each message reduced to role and content."""
    if not isinstance(value, list):
        raise row.error(field, f"expected a list of chat messages, got {_describe(value)}")
    messages = []
    for i, message in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(message, dict):
            raise row.error(where, f"expected a chat message {{'role': ..., 'content': ...}}, got {_describe(message)}")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise row.error(f"{where}.role", f"role must be one of {', '.join(ROLES)}, got {role!r}")
        if content is None:
            raise row.error(f"{where}.content", "missing content")
        if not isinstance(content, str):
            raise row.error(f"{where}.content", f"expected text, got {_describe(content)}")
        messages.append({"role": role, "content": content})
    return messages


def _check_prompt(row: _Row, prompt: list[Message], field: str) -> list[Message]:
    if not prompt:
        raise row.error(field, "empty prompt")
    if prompt[-1]["role"] != "user":
        raise row.error(field, f"the prompt must end with a user turn, got role '{prompt[-1]['role']}'")
    if not prompt[-1]["content"].strip():
        raise row.error(field, "empty prompt")
    return prompt


def _prompt(row: _Row, field: str = "prompt") -> list[Message]:
    value = row.require(field)
    if isinstance(value, str) and is_hh_transcript(value):
        # HH-derived sets often store the prompt as "\n\nHuman: ...\n\nAssistant:" (the reply's slot left empty).
        messages = _parse_hh(row, value, field)
        if messages and messages[-1]["role"] == "assistant" and not messages[-1]["content"]:
            messages = messages[:-1]
        return _check_prompt(row, messages, field)
    if isinstance(value, str):
        if not value.strip():
            raise row.error(field, "empty prompt")
        return [{"role": "user", "content": value}]
    if isinstance(value, dict):  # a single message
        value = [value]
    if not isinstance(value, list):
        raise row.error(field, f"expected text or a list of chat messages, got {_describe(value)}")
    return _check_prompt(row, _messages(row, value, field), field)


def _nonempty_reply(row: _Row, text: str, field: str) -> str:
    if not text.strip():
        raise row.error(field, "empty completion")
    return text


def _reply(row: _Row, value, field: str, prompt: list[Message]) -> str:
    """Reply text from text, or from chat messages (or an HH-RLHF transcript) holding the
    assistant reply, optionally after a repeat of the prompt."""
    if isinstance(value, str) and is_hh_transcript(value):
        value = _parse_hh(row, value, field)
    if isinstance(value, str):
        return _nonempty_reply(row, value, field)
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise row.error(field, f"expected text or a list of chat messages, got {_describe(value)}")
    messages = _messages(row, value, field)
    if len(messages) > 1 and messages[: len(prompt)] == prompt:
        messages = messages[len(prompt) :]
    if len(messages) != 1 or messages[0]["role"] != "assistant":
        raise row.error(field, "expected one assistant message (optionally after the prompt's messages)")
    return _nonempty_reply(row, messages[0]["content"], field)


_HH_TURN = re.compile(r"\n\n(Human|Assistant):[ ]?")
_HH_ROLE = {"Human": "user", "Assistant": "assistant"}


def is_hh_transcript(text: str) -> bool:
    return ("\n\nHuman:" in text or text.startswith("Human:")) and "\n\nAssistant:" in text


def parse_hh_transcript(text: str) -> list[Message]:
    """Anthropic HH-RLHF text ("\\n\\nHuman: hi\\n\\nAssistant: hello") -> chat messages.

    Turn contents are stripped of surrounding whitespace. Raises ValueError if text comes
    before the first turn marker.
    """
    if text.startswith("Human:"):
        text = "\n\n" + text
    parts = _HH_TURN.split(text)  # [preamble, role, content, role, content, ...]
    if parts[0].strip():
        raise ValueError(f"text before the first 'Human:' turn: {parts[0][:40]!r}")
    return [{"role": _HH_ROLE[role], "content": content.strip()} for role, content in zip(parts[1::2], parts[2::2])]


def _parse_hh(row: _Row, text: str, field: str) -> list[Message]:
    try:
        return parse_hh_transcript(text)
    except ValueError as err:
        raise row.error(field, str(err)) from None


def _transcript(row: _Row, field: str) -> list[Message]:
    value = row.require(field)
    if isinstance(value, str):
        if not is_hh_transcript(value):
            raise row.error(
                field,
                "no 'prompt' field, so this must be a whole conversation: a chat-message list or an "
                "HH-RLHF transcript ('\\n\\nHuman: ...\\n\\nAssistant: ...')",
            )
        return _parse_hh(row, value, field)
    return _messages(row, value, field)


def _split_transcripts(row: _Row) -> tuple[list[Message], str, str]:
    """(shared prompt, chosen reply, rejected reply) from two whole conversations that agree on
    every turn but the final assistant one."""
    chosen, rejected = _transcript(row, "chosen"), _transcript(row, "rejected")
    for field, messages in (("chosen", chosen), ("rejected", rejected)):
        if not messages or messages[-1]["role"] != "assistant":
            raise row.error(field, "the conversation must end with an assistant reply")
    shared = 0
    while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
        shared += 1
    if len(chosen) != len(rejected) or shared != len(chosen) - 1:
        raise row.error(
            "rejected",
            f"chosen and rejected conversations differ before their final assistant turn (at message {shared})",
        )
    prompt = _check_prompt(row, chosen[:-1], "chosen")
    return prompt, _nonempty_reply(row, chosen[-1]["content"], "chosen"), _nonempty_reply(row, rejected[-1]["content"], "rejected")


# ---- numbers and labels ----------------------------------------------------------------------------


def _number(row: _Row, value, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise row.error(field, f"expected a number, got {_describe(value)}")
    try:
        number = float(value)
    except ValueError:
        raise row.error(field, f"expected a number, got {value!r}") from None
    if not math.isfinite(number):
        raise row.error(field, f"expected a finite number, got {value!r}")
    return number


_LABELS = {"true": True, "false": False, "good": True, "bad": False, "yes": True, "no": False, "1": True, "0": False}


def _label(row: _Row) -> bool:
    value = row.require("label")
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _LABELS:
        return _LABELS[value.strip().lower()]
    raise row.error("label", f"expected true/false, 1/0 or good/bad, got {value!r}")


def _completion_field(row: _Row) -> str:
    return next((name for name in COMPLETION_FIELDS if row.has(name)), "completion")


# ---- one parser per kind ---------------------------------------------------------------------------


def _demonstration(row: _Row) -> Demonstration:
    if row.has("messages") and not row.has("prompt"):
        messages = _messages(row, row.get("messages"), "messages")
        if len(messages) < 2 or messages[-1]["role"] != "assistant":
            last = messages[-1]["role"] if messages else "none"
            raise row.error("messages", f"need a prompt then the assistant's reply as the last turn (last role: {last})")
        prompt = _check_prompt(row, messages[:-1], "messages")
        return Demonstration(prompt, _nonempty_reply(row, messages[-1]["content"], "messages"), row.source)
    prompt = _prompt(row)
    field = _completion_field(row)
    return Demonstration(prompt, _reply(row, row.require(field), field, prompt), row.source)


def _preference(row: _Row) -> PreferencePair:
    if row.has("prompt"):
        prompt = _prompt(row)
        chosen = _reply(row, row.require("chosen"), "chosen", prompt)
        rejected = _reply(row, row.require("rejected"), "rejected", prompt)
    else:
        prompt, chosen, rejected = _split_transcripts(row)
    if chosen == rejected:
        raise row.error("rejected", "identical to chosen")
    margin = _number(row, row.get("margin"), "margin") if row.has("margin") else None
    return PreferencePair(prompt, chosen, rejected, row.source, margin)


def _ranking(row: _Row) -> Ranking:
    if row.has("model_fingerprint") and row.has("sampling") and not row.has("scores"):
        # `tether sample` output: unordered candidates, which read as a ranking would teach noise.
        raise row.error("completions", "a `tether sample` row holds unranked candidates, not a ranking; label them first (tether label, tether judge, tether annotate)")
    prompt = _prompt(row)
    values = row.require("completions")
    if not isinstance(values, list):
        raise row.error("completions", f"expected a list of replies, best first, got {_describe(values)}")
    completions = [_reply(row, value, f"completions[{i}]", prompt) for i, value in enumerate(values)]
    if len(completions) < 2:
        raise row.error("completions", f"a ranking needs at least 2 completions, got {len(completions)}")
    first_seen: dict[str, int] = {}
    for i, text in enumerate(completions):
        if text in first_seen:
            raise row.error(f"completions[{i}]", f"duplicate of completions[{first_seen[text]}]")
        first_seen[text] = i
    scores = None
    if row.has("scores"):
        raw = row.get("scores")
        if not isinstance(raw, list):
            raise row.error("scores", f"expected a list of numbers, got {_describe(raw)}")
        if len(raw) != len(completions):
            raise row.error("scores", f"{len(raw)} scores for {len(completions)} completions")
        scores = [_number(row, value, f"scores[{i}]") for i, value in enumerate(raw)]
        order = sorted(range(len(scores)), key=lambda i: -scores[i])  # stable: ties keep file order
        completions, scores = [completions[i] for i in order], [scores[i] for i in order]
    return Ranking(prompt, completions, row.source, scores)


def _unpaired(row: _Row) -> UnpairedExample:
    prompt = _prompt(row)
    field = _completion_field(row)
    completion = _reply(row, row.require(field), field, prompt)
    return UnpairedExample(prompt, completion, _label(row), row.source)


def _prompt_only(row: _Row) -> Prompt:
    if row.has("prompt"):
        return Prompt(_prompt(row), row.source)
    if row.has("messages"):
        messages = _messages(row, row.get("messages"), "messages")
        if messages and messages[-1]["role"] == "assistant":
            messages = messages[:-1]
        return Prompt(_check_prompt(row, messages, "messages"), row.source)
    if row.has("chosen"):
        return Prompt(_split_transcripts(row)[0], row.source)
    raise row.error("prompt", f"missing field (row has: {', '.join(map(str, row.fields)) or 'no fields'})")


PARSERS: dict[Kind, Callable[[_Row], Record]] = {
    Kind.DEMONSTRATION: _demonstration,
    Kind.PREFERENCE: _preference,
    Kind.RANKING: _ranking,
    Kind.UNPAIRED: _unpaired,
    Kind.PROMPT: _prompt_only,
}

# Checked in order: the first whose fields are present decides a row's kind.
DETECTORS: list[tuple[Kind, Callable[[_Row], bool]]] = [
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
    row = _Row(Source("", 0), fields)
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


def normalize_rows(rows: Iterable[tuple[Source, dict | DataError]], path: str, kind: str | Kind = "auto", on_error: str = "raise") -> LoadedRecords:
    """Typed records from reader rows. ``on_error="raise"`` raises the first ``DataError``;
    ``"skip"`` leaves bad rows out and lists their errors in ``skipped``. Under ``kind="auto"``
    the first row with replies fixes the kind (see ``_file_kind``); a row of another kind is an
    error (one file holds one kind)."""
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    rows = list(rows)
    if not rows:
        raise DataError(path, None, None, "no records in this file")
    fixed = parse_kind(kind)
    fixed_by_line = None
    if fixed is None:
        fixed, fixed_by_line = _file_kind(rows)
    records: list[Record] = []
    skipped: list[DataError] = []
    for source, fields in rows:
        try:
            if isinstance(fields, DataError):
                raise fields
            row = _Row(source, fields)
            if fixed is None or fixed_by_line is not None:  # kind="auto": check the row against the file's kind
                detected = detect_kind(fields)
                if detected is None:
                    raise row.error(
                        None,
                        f"cannot tell what kind of record this is from its fields ({', '.join(map(str, fields)) or 'none'}); "
                        "expected prompt+completion, messages, prompt+chosen+rejected, prompt+completions, "
                        "prompt+completion+label, or prompt alone",
                    )
                if detected != fixed and detected != Kind.PROMPT:
                    raise row.error(
                        None,
                        f"looks like a {detected.value} record, but line {fixed_by_line} made this a file of "
                        f"{fixed.value} records; one file holds one kind",
                    )
                # A prompt-only row in a file of another kind falls through: the parser names the missing field.
            records.append(PARSERS[fixed](row))
        except DataError as err:
            if on_error == "raise":
                raise
            skipped.append(err)
    return LoadedRecords(records, fixed.value if fixed is not None else "unknown", skipped)
