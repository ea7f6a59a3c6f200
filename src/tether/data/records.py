"""Typed records: what every data format is normalised into before tokenisation.

A record knows where it came from (``source``) so that any later complaint about it
(too long, dropped, malformed) can name the file and line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": str}

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Source:
    """Where a record came from, for error messages.

    ``line`` is 1-based: the JSONL line, the CSV line the row starts on (the header is
    line 1), the JSON array index + 1, or the Parquet / saved-dataset row index + 1.
    """

    path: str
    line: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}"


@dataclass
class Demonstration:
    """A prompt and the reply to imitate (SFT)."""

    prompt: list[Message]  # ends with a user turn
    completion: str
    source: Source


@dataclass
class PreferencePair:
    """A prompt with a preferred and a dispreferred reply; ``margin`` is an optional strength."""

    prompt: list[Message]
    chosen: str
    rejected: str
    source: Source
    margin: float | None = None


@dataclass
class Ranking:
    """A prompt with two or more replies, best first (sorted by ``scores`` descending when given)."""

    prompt: list[Message]
    completions: list[str]
    source: Source
    scores: list[float] | None = None


@dataclass
class UnpairedExample:
    """A prompt and one reply labelled desirable (True) or undesirable (False), as KTO uses."""

    prompt: list[Message]
    completion: str
    label: bool
    source: Source


@dataclass
class Prompt:
    """A prompt alone, for online training (PPO, GRPO, RLOO) where the policy writes the replies."""

    prompt: list[Message]
    source: Source


Record = Union[Demonstration, PreferencePair, Ranking, UnpairedExample, Prompt]


@dataclass
class LoadedRecords:
    """What ``tether.data.load_records`` returns.

    ``kind`` is one of "demonstration", "preference", "ranking", "unpaired", "prompt". ``skipped``
    holds one ``DataError`` per malformed row left out under ``on_error="skip"`` (empty
    under ``on_error="raise"``, where the first one is raised instead).
    """

    records: list[Record]
    kind: str
    skipped: list = field(default_factory=list)  # list[DataError]
