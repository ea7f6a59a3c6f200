"""Records -> token ids with the completion's start marked; truncation of over-long examples.

The prompt is rendered with the tokenizer's chat template and ``add_generation_prompt=True``
(exactly what the model sees when asked to generate), the whole conversation with the reply
appended, and the reply's tokens are whatever the second rendering adds after the first. Prompt
and reply text are tokenised separately, so the prompt's ids are the same ones generation would
start from, and siblings (chosen/rejected, a ranking's replies) share them exactly.

The reply's tokens end with the end-of-turn marker (``<|im_end|>`` for ChatML): the model learns
to stop. Whitespace a template writes after that marker (ChatML's ``"\\n"``) is dropped, since
nothing is generated after the stop token.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum

from tether.data.records import Demonstration, Message, PreferencePair, Ranking, Record, Source, UnpairedExample


class ChatTemplateError(ValueError):
    """The tokenizer's chat template cannot be used to split prompt from reply."""


@dataclass
class Encoded:
    """Token ids of prompt + completion; ``input_ids[prompt_len:]`` are the completion tokens,
    the only ones that carry loss."""

    input_ids: list[int]
    prompt_len: int

    @property
    def completion_ids(self) -> list[int]:
        return self.input_ids[self.prompt_len :]

    def __len__(self) -> int:
        return len(self.input_ids)


# ---- rendering -------------------------------------------------------------------------------------


def _has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def _special_tokens(tokenizer) -> set[str]:
    specials = set(getattr(tokenizer, "all_special_tokens", []) or [])
    for added in getattr(tokenizer, "added_tokens_decoder", {}).values():
        if getattr(added, "special", False):
            specials.add(str(added))
    return {s for s in specials if s}


def _ids(tokenizer, text: str, add_special_tokens: bool = False) -> list[int]:
    return list(tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])


def render_prompt(tokenizer, prompt: list[Message]) -> str:
    """The prompt as the model sees it right before generating its reply."""
    if _has_chat_template(tokenizer):
        return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    return "\n\n".join(message["content"] for message in prompt)


def _completion_text(tokenizer, prompt: list[Message], prompt_text: str, completion: str) -> str:
    """The text the chat template adds for the reply, end-of-turn marker included, trailing
    whitespace after that marker left out."""
    full = tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": completion}], tokenize=False)
    if not full.startswith(prompt_text):
        at = next((i for i, (a, b) in enumerate(zip(full, prompt_text)) if a != b), min(len(full), len(prompt_text)))
        raise ChatTemplateError(
            "the chat template renders the conversation with the reply so that it does not start with the "
            "prompt rendered with add_generation_prompt=True, so the reply's tokens cannot be told apart; "
            f"they first differ at character {at}: prompt ...{prompt_text[max(0, at - 30):at + 30]!r} vs "
            f"conversation ...{full[max(0, at - 30):at + 30]!r}. Use a template that renders earlier turns "
            "the same way whether or not a reply follows."
        )
    text = full[len(prompt_text) :]
    stripped = text.rstrip()
    if any(stripped.endswith(token) for token in _special_tokens(tokenizer)):
        return stripped
    return text


def _encode_group(tokenizer, prompt: list[Message], completions: Sequence[str]) -> list[Encoded]:
    """One Encoded per completion, all with the same prompt ids."""
    if _has_chat_template(tokenizer):
        prompt_text = render_prompt(tokenizer, prompt)
        prompt_ids = _ids(tokenizer, prompt_text)
        completion_ids = []
        eos = _eos_id(tokenizer, required=False)
        for completion in completions:
            ids = _ids(tokenizer, _completion_text(tokenizer, prompt, prompt_text, completion))
            if eos is not None and not _ends_with_special(tokenizer, ids):
                ids.append(eos)  # a template with no end-of-turn marker: the model must still learn to stop
            completion_ids.append(ids)
    else:
        prompt_ids = _ids(tokenizer, render_prompt(tokenizer, prompt), add_special_tokens=True)  # BOS if the tokenizer uses one
        eos = _eos_id(tokenizer, required=True)
        completion_ids = [_ids(tokenizer, completion) + [eos] for completion in completions]
    return [Encoded(prompt_ids + ids, len(prompt_ids)) for ids in completion_ids]


def _eos_id(tokenizer, required: bool) -> int | None:
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None and required:
        raise ChatTemplateError("the tokenizer has neither a chat template nor an eos token, so a reply's end cannot be marked")
    return eos


def _ends_with_special(tokenizer, ids: list[int]) -> bool:
    return bool(ids) and ids[-1] in set(getattr(tokenizer, "all_special_ids", []) or [])


def encode(tokenizer, prompt: list[Message], completion: str) -> Encoded:
    """Token ids for ``prompt`` followed by ``completion``; see the module docstring."""
    return _encode_group(tokenizer, prompt, [completion])[0]


def encode_prompt(tokenizer, prompt: list[Message]) -> list[int]:
    """The prompt's token ids, ready for generation: the same ids ``encode`` puts before a reply."""
    return _ids(tokenizer, render_prompt(tokenizer, prompt), add_special_tokens=not _has_chat_template(tokenizer))


# ---- truncation ------------------------------------------------------------------------------------


class Truncation(str, Enum):
    TRUNCATE_PROMPT = "truncate_prompt"  # cut the prompt's start (it keeps its last token), then the completion's end
    TRUNCATE_COMPLETION = "truncate_completion"  # cut the completion's end
    DROP = "drop"  # leave the example out


# How many prompt tokens to cut from the left, given (prompt_len, excess tokens); None = drop.
# truncate_prompt keeps one prompt token so the first completion token still has a position
# that predicts it (a sequence's first token is never a target).
PROMPT_CUT: dict[Truncation, Callable[[int, int], int | None]] = {
    Truncation.TRUNCATE_PROMPT: lambda prompt_len, excess: min(excess, max(prompt_len - 1, 0)),
    Truncation.TRUNCATE_COMPLETION: lambda prompt_len, excess: 0,
    Truncation.DROP: lambda prompt_len, excess: None,
}


def truncate_group(group: Sequence[Encoded], max_length: int, policy: str | Truncation) -> list[Encoded] | None:
    """Fit siblings that share their prompt tokens into ``max_length`` each, keeping the prompt
    identical across them: the prompt is cut by what the longest sibling needs, then each
    completion's end is cut to the room left. None (drop) if the policy says so or fewer than
    one completion token would remain in any sibling."""
    policy = Truncation(policy)
    longest = max(len(e) for e in group)
    if longest <= max_length:
        return list(group)
    prompt_len = group[0].prompt_len
    cut = PROMPT_CUT[policy](prompt_len, longest - max_length)
    if cut is None:
        return None
    room = max_length - (prompt_len - cut)  # completion tokens that fit
    if room < 1:
        return None
    return [Encoded(e.input_ids[cut:prompt_len] + e.completion_ids[:room], prompt_len - cut) for e in group]


def truncate(encoded: Encoded, max_length: int, policy: str | Truncation) -> Encoded | None:
    """``encoded`` fitted into ``max_length`` tokens by ``policy``, or None if it is dropped."""
    kept = truncate_group([encoded], max_length, policy)
    return None if kept is None else kept[0]


# ---- whole record lists ----------------------------------------------------------------------------


@dataclass
class EncodeStats:
    """What ``encode_records`` did: every truncation and drop is counted, drops with their source."""

    total: int = 0
    truncated: int = 0
    dropped: int = 0
    truncated_sources: list[Source] = field(default_factory=list)
    dropped_sources: list[Source] = field(default_factory=list)
    kept_records: list[Record] = field(default_factory=list)  # aligned with the returned items

    @property
    def kept(self) -> int:
        return len(self.kept_records)

    def describe(self) -> str:
        text = f"{self.total} records, {self.truncated} truncated, {self.dropped} dropped as too long"
        if self.dropped_sources:
            shown = ", ".join(str(s) for s in self.dropped_sources[:5])
            more = f" and {len(self.dropped_sources) - 5} more" if len(self.dropped_sources) > 5 else ""
            text += f" ({shown}{more})"
        return text


# Per record type: the completions to encode, and how their Encoded siblings become one item.
LAYOUTS: dict[type, tuple[Callable[[Record], list[str]], Callable[[Record, list[Encoded]], object]]] = {
    Demonstration: (lambda r: [r.completion], lambda r, e: e[0]),
    PreferencePair: (lambda r: [r.chosen, r.rejected], lambda r, e: (e[0], e[1])),
    Ranking: (lambda r: list(r.completions), lambda r, e: list(e)),
    UnpairedExample: (lambda r: [r.completion], lambda r, e: (e[0], bool(r.label))),
}


def encode_records(tokenizer, records: Sequence[Record], max_length: int, policy: str | Truncation = "truncate_prompt"):
    """Encode and fit records; returns ``(items, stats)``.

    Items, one per kept record: Demonstration -> Encoded; PreferencePair -> (chosen, rejected);
    Ranking -> [Encoded, ...] best first; UnpairedExample -> (Encoded, label). Siblings share
    identical prompt tokens, before and after truncation.
    """
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2 (a prompt token and a completion token), got {max_length}")
    policy = Truncation(policy)
    items, stats = [], EncodeStats()
    for record in records:
        if type(record) not in LAYOUTS:
            raise TypeError(f"cannot encode a {type(record).__name__} with replies; for prompts alone use encode_prompt")
        completions_of, assemble = LAYOUTS[type(record)]
        stats.total += 1
        group = _encode_group(tokenizer, record.prompt, completions_of(record))
        fitted = truncate_group(group, max_length, policy)
        if fitted is None:
            stats.dropped += 1
            stats.dropped_sources.append(record.source)
            continue
        if any(len(a) != len(b) for a, b in zip(fitted, group)):
            stats.truncated += 1
            stats.truncated_sources.append(record.source)
        stats.kept_records.append(record)
        items.append(assemble(record, fitted))
    return items, stats
