"""Rankings: a prompt with two or more replies, in any of three layouts.

- ``completions`` best first: ``{"prompt": ..., "completions": ["best", "next", ...]}``;
- ``completions`` with a parallel ``scores`` list (any order);
- ``completions`` as objects, each a reply and its score, in any order:
  ``{"prompt": ..., "completions": [{"text": ..., "score": 7.5}, ...]}``. The reply is read from
  ``text``, ``response``, ``completion`` or ``output``, the score from ``score`` or ``overall_score``.
  This covers UltraFeedback (openbmb/UltraFeedback), whose rows are
  ``{"instruction": ..., "completions": [{"response": ..., "overall_score": ...,
  "fine-grained_score": ..., "annotations": {"helpfulness": {"Rating": "4", ...}, ...}}]}``:
  ``score_key`` (``data.score_key``) picks another score, a dotted path into each object, e.g.
  ``fine-grained_score`` or ``annotations.helpfulness.Rating``.

A ranking row's prompt is ``prompt``, or else ``instruction`` (UltraFeedback's name). Scored replies
are sorted by score, highest first; replies of equal score keep their file order and stay visible as
equal values in ``Ranking.scores``. The ranking losses read a list as a strict order, so training
decides what a tie means with ``resolve_ties`` (``data.ties``), and reports it.
"""

from __future__ import annotations

from tether.data.errors import DataError
from tether.data.fields import Row, describe, read_number, read_prompt, read_reply
from tether.data.records import Ranking

PROMPT_FIELDS = ("prompt", "instruction")  # first one present wins
TEXT_FIELDS = ("text", "response", "completion", "output")
SCORE_FIELDS = ("score", "overall_score")
TIES = ("drop", "file_order", "error")

# The accepted ranking shapes, by their fields, for error messages.
SHAPES = (
    "prompt+completions (a list of replies, best first)",
    "prompt+completions+scores (replies and their scores, any order)",
    f"prompt|instruction+completions as objects ({'|'.join(TEXT_FIELDS)} and {'|'.join(SCORE_FIELDS)} or data.score_key)",
)


def _is_object(value) -> bool:
    """A scored completion object; a dict with a ``role`` is a chat message instead."""
    return isinstance(value, dict) and "role" not in value


def _lookup(obj: dict, path: str):
    """``obj["a"]["b"]`` for ``path="a.b"``; None where a step is missing. A key containing a dot
    is tried whole first."""
    if path in obj:
        return obj[path]
    value = obj
    for part in path.split("."):
        if not isinstance(value, dict) or value.get(part) is None:
            return None
        value = value[part]
    return value


def _scored_object(row: Row, obj: dict, where: str, prompt, score_key: str | None) -> tuple[str, float]:
    """(reply text, score) from one completion object; errors name ``completions[i].field``."""
    fields = ", ".join(map(str, obj)) or "no fields"
    text_field = next((name for name in TEXT_FIELDS if obj.get(name) is not None), None)
    if text_field is None:
        raise row.error(f"{where}.text", f"missing the reply: expected one of {', '.join(TEXT_FIELDS)} (object has: {fields})")
    text = read_reply(row, obj[text_field], f"{where}.{text_field}", prompt)
    if score_key is not None:
        score_field, value = score_key, _lookup(obj, score_key)
    else:
        score_field = next((name for name in SCORE_FIELDS if obj.get(name) is not None), SCORE_FIELDS[0])
        value = obj.get(score_field)
    if value is None:
        expected = f"'{score_key}' (data.score_key)" if score_key else f"one of {', '.join(SCORE_FIELDS)}"
        raise row.error(f"{where}.{score_field}", f"missing score: expected {expected} (object has: {fields})")
    return text, read_number(row, value, f"{where}.{score_field}")


def parse_ranking(row: Row, score_key: str | None = None) -> Ranking:
    """A ``Ranking`` from one row in any of the layouts above, best first."""
    if row.has("model_fingerprint") and row.has("sampling") and not row.has("scores"):
        # `tether sample` output: unordered candidates, which read as a ranking would teach noise.
        raise row.error("completions", "a `tether sample` row holds unranked candidates, not a ranking; label them first (tether label, tether judge, tether annotate)")
    prompt_field = next((name for name in PROMPT_FIELDS if row.has(name)), "prompt")
    prompt = read_prompt(row, prompt_field)
    values = row.require("completions")
    if not isinstance(values, list):
        raise row.error("completions", f"expected a list of replies, best first, or of objects with a reply and a score, got {describe(values)}")
    objects = [_is_object(value) for value in values]
    scores = None
    if any(objects):
        if not all(objects):
            i = objects.index(False)
            raise row.error(f"completions[{i}]", "mixes plain replies with scored objects; give every completion as an object with a reply and a score")
        if row.has("scores"):
            raise row.error("scores", "the completions carry their own scores; drop the 'scores' list or the objects' scores")
        pairs = [_scored_object(row, value, f"completions[{i}]", prompt, score_key) for i, value in enumerate(values)]
        completions, scores = [text for text, _ in pairs], [score for _, score in pairs]
    else:
        if score_key is not None:
            raise row.error("completions", f"data.score_key={score_key!r} applies to completions given as objects; these are plain replies")
        completions = [read_reply(row, value, f"completions[{i}]", prompt) for i, value in enumerate(values)]
        if row.has("scores"):
            raw = row.get("scores")
            if not isinstance(raw, list):
                raise row.error("scores", f"expected a list of numbers, got {describe(raw)}")
            if len(raw) != len(completions):
                raise row.error("scores", f"{len(raw)} scores for {len(completions)} completions")
            scores = [read_number(row, value, f"scores[{i}]") for i, value in enumerate(raw)]
    if len(completions) < 2:
        raise row.error("completions", f"a ranking needs at least 2 completions, got {len(completions)}")
    first_seen: dict[str, int] = {}
    for i, text in enumerate(completions):
        if text in first_seen:
            raise row.error(f"completions[{i}]", f"duplicate of completions[{first_seen[text]}]")
        first_seen[text] = i
    if scores is not None:
        order = sorted(range(len(scores)), key=lambda i: -scores[i])  # stable: ties keep file order
        completions, scores = [completions[i] for i in order], [scores[i] for i in order]
    return Ranking(prompt, completions, row.source, scores)


def has_ties(record) -> bool:
    """A ranking with two or more equal scores (False for any other record)."""
    return isinstance(record, Ranking) and record.scores is not None and len(set(record.scores)) < len(record.scores)


def resolve_ties(records: list, policy: str, what: str) -> tuple[list, list[str]]:
    """Apply ``data.ties`` to rankings whose scores tie, and say what was done.

    The ranking losses (Plackett–Luce, listwise DPO) and the pairs drawn from a ranking read its
    list as a strict order, so two replies with equal scores would become a preference the data
    does not state. ``drop``: keep the first reply (in file order) of each score, and skip a
    ranking left with fewer than 2; ``file_order``: keep every reply, tied ones in file order (the
    losses then prefer the earlier); ``error``: stop at the first tied ranking. Records of other
    kinds pass through. Returns (records, report lines, empty when nothing tied).
    """
    if policy not in TIES:
        raise ValueError(f"data.ties must be one of {', '.join(TIES)}, got {policy!r}")
    tied = [r for r in records if has_ties(r)]
    if not tied:
        return records, []
    first = tied[0]
    example = f"first at {first.source}: scores {first.scores}"
    if policy == "error":
        raise DataError(first.source.path, first.source.line, "scores", f"tied scores {first.scores} (data.ties=error); set data.ties=drop or data.ties=file_order")
    if policy == "file_order":
        return records, [f"{what}: {len(tied)} rankings have tied scores ({example}); data.ties=file_order trains tied replies in file order, as if the earlier were preferred"]
    kept, dropped_replies, dropped_rankings = [], 0, 0
    for record in records:
        if not has_ties(record):
            kept.append(record)
            continue
        seen: set[float] = set()
        index = [i for i, s in enumerate(record.scores) if not (s in seen or seen.add(s))]
        dropped_replies += len(record.scores) - len(index)
        if len(index) < 2:
            dropped_rankings += 1
            continue
        kept.append(Ranking(record.prompt, [record.completions[i] for i in index], record.source, [record.scores[i] for i in index]))
    return kept, [
        f"{what}: {len(tied)} rankings have tied scores ({example}); data.ties=drop kept the first reply of each score, "
        f"dropping {dropped_replies} replies and {dropped_rankings} rankings left with fewer than 2 (data.ties=file_order keeps them)"
    ]
