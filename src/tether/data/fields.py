"""Readers for the fields of one row: chat messages, prompts, replies, HH-RLHF transcripts, numbers
and labels, each raising a ``DataError`` that names the file, line and field at fault."""

from __future__ import annotations

import math
import re

from tether.data.errors import DataError
from tether.data.records import ROLES, Message, Source

COMPLETION_FIELDS = ("completion", "response", "output")  # first one present wins


class Row:
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


def describe(value) -> str:
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


def chat_messages(row: Row, value, field: str) -> list[Message]:
    """A validated chat-message list, each message reduced to role and content."""
    if not isinstance(value, list):
        raise row.error(field, f"expected a list of chat messages, got {describe(value)}")
    messages = []
    for i, message in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(message, dict):
            raise row.error(where, f"expected a chat message {{'role': ..., 'content': ...}}, got {describe(message)}")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise row.error(f"{where}.role", f"role must be one of {', '.join(ROLES)}, got {role!r}")
        if content is None:
            raise row.error(f"{where}.content", "missing content")
        if not isinstance(content, str):
            raise row.error(f"{where}.content", f"expected text, got {describe(content)}")
        messages.append({"role": role, "content": content})
    return messages


def check_prompt(row: Row, prompt: list[Message], field: str) -> list[Message]:
    if not prompt:
        raise row.error(field, "empty prompt")
    if prompt[-1]["role"] != "user":
        raise row.error(field, f"the prompt must end with a user turn, got role '{prompt[-1]['role']}'")
    if not prompt[-1]["content"].strip():
        raise row.error(field, "empty prompt")
    return prompt


def read_prompt(row: Row, field: str = "prompt") -> list[Message]:
    value = row.require(field)
    if isinstance(value, str) and is_hh_transcript(value):
        # HH-derived sets often store the prompt as "\n\nHuman: ...\n\nAssistant:" (the reply's slot left empty).
        messages = parse_hh(row, value, field)
        if messages and messages[-1]["role"] == "assistant" and not messages[-1]["content"]:
            messages = messages[:-1]
        return check_prompt(row, messages, field)
    if isinstance(value, str):
        if not value.strip():
            raise row.error(field, "empty prompt")
        return [{"role": "user", "content": value}]
    if isinstance(value, dict):  # a single message
        value = [value]
    if not isinstance(value, list):
        raise row.error(field, f"expected text or a list of chat messages, got {describe(value)}")
    return check_prompt(row, chat_messages(row, value, field), field)


def nonempty_reply(row: Row, text: str, field: str) -> str:
    if not text.strip():
        raise row.error(field, "empty completion")
    return text


def read_reply(row: Row, value, field: str, prompt: list[Message]) -> str:
    """Reply text from text, or from chat messages (or an HH-RLHF transcript) holding the
    assistant reply, optionally after a repeat of the prompt."""
    if isinstance(value, str) and is_hh_transcript(value):
        value = parse_hh(row, value, field)
    if isinstance(value, str):
        return nonempty_reply(row, value, field)
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise row.error(field, f"expected text or a list of chat messages, got {describe(value)}")
    messages = chat_messages(row, value, field)
    if len(messages) > 1 and messages[: len(prompt)] == prompt:
        messages = messages[len(prompt) :]
    if len(messages) != 1 or messages[0]["role"] != "assistant":
        raise row.error(field, "expected one assistant message (optionally after the prompt's messages)")
    return nonempty_reply(row, messages[0]["content"], field)


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


def parse_hh(row: Row, text: str, field: str) -> list[Message]:
    try:
        return parse_hh_transcript(text)
    except ValueError as err:
        raise row.error(field, str(err)) from None


def read_transcript(row: Row, field: str) -> list[Message]:
    value = row.require(field)
    if isinstance(value, str):
        if not is_hh_transcript(value):
            raise row.error(
                field,
                "no 'prompt' field, so this must be a whole conversation: a chat-message list or an "
                "HH-RLHF transcript ('\\n\\nHuman: ...\\n\\nAssistant: ...')",
            )
        return parse_hh(row, value, field)
    return chat_messages(row, value, field)


def split_transcripts(row: Row) -> tuple[list[Message], str, str]:
    """(shared prompt, chosen reply, rejected reply) from two whole conversations that agree on
    every turn but the final assistant one."""
    chosen, rejected = read_transcript(row, "chosen"), read_transcript(row, "rejected")
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
    prompt = check_prompt(row, chosen[:-1], "chosen")
    return prompt, nonempty_reply(row, chosen[-1]["content"], "chosen"), nonempty_reply(row, rejected[-1]["content"], "rejected")


# ---- numbers and labels ----------------------------------------------------------------------------


def read_number(row: Row, value, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise row.error(field, f"expected a number, got {describe(value)}")
    try:
        number = float(value)
    except ValueError:
        raise row.error(field, f"expected a number, got {value!r}") from None
    if not math.isfinite(number):
        raise row.error(field, f"expected a finite number, got {value!r}")
    return number


_LABELS = {"true": True, "false": False, "good": True, "bad": False, "yes": True, "no": False, "1": True, "0": False}


def read_label(row: Row) -> bool:
    value = row.require("label")
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _LABELS:
        return _LABELS[value.strip().lower()]
    raise row.error("label", f"expected true/false, 1/0 or good/bad, got {value!r}")


def completion_field(row: Row) -> str:
    return next((name for name in COMPLETION_FIELDS if row.has(name)), "completion")
