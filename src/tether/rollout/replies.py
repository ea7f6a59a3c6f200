"""Replies to prompts from the rollout engine: several samples per prompt, seeded, in batches.

What ``tether generate`` runs, kept apart from the CLI so other commands (sampling candidates for
annotation) can call the same function. Sampling is ``tether.rollout.engine.generate``, the
KV-cached engine the online trainers use; ``SamplingParams(greedy=True)`` takes the most likely
token at every step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tether.data.records import Message
from tether.rollout.engine import SamplingParams


@dataclass
class Reply:
    prompt: list[Message]  # the conversation replied to, ending with a user turn
    sample: int  # 0 .. samples-1 for this prompt
    text: str
    new_tokens: int  # tokens generated, including the stop token if it came
    finished: bool  # True: stopped at a stop token; False: reached max_new_tokens


def as_messages(prompt: str | Sequence[Message]) -> list[Message]:
    """A plain string is one user turn."""
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [dict(m) for m in prompt]


def sample_replies(
    model,
    tokenizer,
    prompts: Sequence[str | Sequence[Message]],
    params: SamplingParams,
    samples: int = 1,
    seed: int = 0,
    batch_size: int = 16,
) -> list[Reply]:
    """``samples`` replies to each prompt, prompt-major (all of prompt 0's, then prompt 1's, ...).

    Rows (prompt repeated ``samples`` times) go through the engine ``batch_size`` at a time from
    one ``torch.Generator`` seeded with ``seed``: the same call with the same seed gives the same
    replies. Greedy sampling gives ``samples`` identical replies, so it refuses ``samples`` > 1.
    """
    import torch

    from tether.rollout.engine import encode_prompts, generate

    if samples < 1:
        raise ValueError(f"samples must be at least 1, got {samples}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if params.greedy and samples > 1:
        raise ValueError(f"greedy decoding (temperature 0) gives {samples} identical replies; set a temperature above 0 to draw several")
    conversations = [as_messages(p) for p in prompts]
    if not conversations:
        raise ValueError("no prompts to reply to")
    rows = [(i, k) for i in range(len(conversations)) for k in range(samples)]  # (prompt, sample), prompt-major
    ids = encode_prompts(tokenizer, conversations)
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    was_training = model.training
    model.eval()
    replies = []
    try:
        with torch.no_grad():
            for start in range(0, len(rows), batch_size):
                chunk = rows[start : start + batch_size]
                rollout = generate(model, tokenizer, [ids[i] for i, _ in chunk], params, generator)
                lengths = rollout.response_lengths().tolist()  # [b]
                for (i, k), text, n, done in zip(chunk, rollout.texts, lengths, rollout.finished.tolist()):
                    replies.append(Reply(conversations[i], k, text.strip(), int(n), bool(done)))
    finally:
        model.train(was_training)
    return replies


__all__ = ["Reply", "as_messages", "sample_replies"]
