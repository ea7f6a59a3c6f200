"""Batched sampling with a KV cache: prompts in, a ``Rollout`` of tokens, masks and log-probs out.

One loop for every model: left-pad the prompts, run one prefill over them, then decode one
token per row per step from the cached keys and values. A row that has emitted an eos token
keeps being fed a pad token (its outputs are ignored) and the loop ends as soon as every row
has stopped. Two interchangeable decoders produce the next-token logits:

* ``DecodePath.HF``: any Hugging Face causal LM through ``model(..., past_key_values=...)``,
  asking for the last position's logits only (``logits_to_keep=1`` where supported);
* ``DecodePath.LLAMA_STATIC``: Llama-style models (SmolLM2 is one), run layer by layer over a
  pre-allocated KV cache that this module owns (see ``tether.rollout.llama_decoder``). Nothing
  grows or is rebuilt per step: no cache concatenation, no 4-D mask construction.

``DecodePath.AUTO`` picks the static decoder when the model supports it. Both are tested to
give the same tokens and log-probs.

Log-probs: the reported log-prob of a token is under ``softmax(logits / temperature)`` over the
full vocabulary, *before* top-k / top-p filtering. That is the quantity the training forward pass
(``tether.models.forward_token_logprobs(model, batch, temperature)``) recomputes, so the ratio
of new to old policy starts at exactly 1. Filtering only decides which tokens can be drawn.

``min_new_tokens`` is different: it changes the distribution itself. Before a row has generated
that many tokens its stop tokens cannot be drawn, and the reported log-prob is under the
distribution renormalised over the other tokens, log π(y) − log(1 − Σ_eos π(eos)). The rollout
records which tokens were excluded where (``Rollout.banned_ids``, ``banned_until``) so a
training forward can apply the same renormalisation (``tether.trainers.online.batch.response_logprobs``
does); ``forward_token_logprobs`` does not, and agrees with the engine only when nothing was banned.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum

import torch


@dataclass
class SamplingParams:
    max_new_tokens: int = 48
    temperature: float = 1.0  # >0; logits / temperature
    top_p: float = 1.0  # nucleus; 1.0 = off
    top_k: int = 0  # 0 = off
    stop_at_eos: bool = True  # a row stops after emitting an eos token (see stop_token_ids)
    min_new_tokens: int = 0  # with stop_at_eos: stop tokens cannot be drawn before this many tokens (renormalised, see above)
    greedy: bool = False  # take the most likely token; log-probs are still under softmax(logits / temperature)

    def __post_init__(self):
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature} (greedy decoding: greedy=True)")
        if self.greedy and (self.top_k or self.top_p < 1.0):
            raise ValueError(f"top_k={self.top_k} / top_p={self.top_p} do nothing with greedy decoding, which always takes the most likely token")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.min_new_tokens < 0:
            raise ValueError(f"min_new_tokens must be >= 0, got {self.min_new_tokens}")


@dataclass
class Rollout:
    prompt_ids: list[list[int]]  # [B] prompt tokens of each row (no padding)
    response_ids: torch.Tensor  # [B, Tr] long, sampled tokens, right-padded with pad_id after the row stopped
    response_mask: torch.Tensor  # [B, Tr] bool, True on generated tokens, including the eos that stopped the row
    logprobs: torch.Tensor  # [B, Tr] float, log-prob under softmax(logits / temperature), full vocab; 0 off the mask
    texts: list[str]  # decoded responses, special tokens skipped
    finished: torch.Tensor  # [B] bool, True if the row stopped at eos (False: hit max_new_tokens)
    # Tokens excluded from the distribution at response columns < banned_until (min_new_tokens):
    # there ``logprobs`` are renormalised over the other tokens.
    banned_ids: tuple[int, ...] = ()
    banned_until: int = 0

    def response_lengths(self) -> torch.Tensor:
        return self.response_mask.sum(dim=1)  # [B]

    def sequences(self) -> list[tuple[list[int], int]]:
        """``(prompt + response ids without padding, prompt_len)`` per row, for ``tether.data.batches.collate``."""
        lengths = self.response_lengths().tolist()
        responses = self.response_ids.tolist()
        return [(list(p) + r[:n], len(p)) for p, r, n in zip(self.prompt_ids, responses, lengths)]


# ---- tokens ----------------------------------------------------------------------------------------


def stop_token_ids(tokenizer) -> list[int]:
    """Token ids that end a reply: the tokenizer's eos, and ``<|im_end|>`` if the chat template uses it."""
    ids = []
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.append(int(tokenizer.eos_token_id))
    template = getattr(tokenizer, "chat_template", None) or ""
    if isinstance(template, str) and "<|im_end|>" in template:
        im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
        if isinstance(im_end, int) and im_end != getattr(tokenizer, "unk_token_id", None):
            ids.append(im_end)
    return sorted(set(ids))


def pad_token_id(tokenizer) -> int:
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        pad = getattr(tokenizer, "eos_token_id", None)
    if pad is None:
        raise ValueError("the tokenizer has neither a pad nor an eos token to pad with")
    return int(pad)


def encode_prompts(tokenizer, prompts: Sequence[str] | Sequence[list[dict]]) -> list[list[int]]:
    """Prompt token ids ready for generation: the chat template with its generation prompt
    (the same ids ``tether.data.encode.encode`` puts before a reply), plain text if no template.
    A string is a single user turn."""
    from tether.data.encode import encode_prompt

    return [encode_prompt(tokenizer, [{"role": "user", "content": p}] if isinstance(p, str) else list(p)) for p in prompts]


def left_pad(prompt_ids: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask, position_ids)``, each [B, P], prompts right-aligned so every
    row's next token goes in the same column; positions start at 0 on each row's first real token."""
    width = max(len(p) for p in prompt_ids)
    input_ids = torch.full((len(prompt_ids), width), pad_id, dtype=torch.long)  # [B, P]
    attention_mask = torch.zeros(len(prompt_ids), width, dtype=torch.long)  # [B, P]
    for i, p in enumerate(prompt_ids):
        if len(p) == 0:
            raise ValueError(f"prompt {i} is empty; generation needs at least one token to condition on")
        input_ids[i, width - len(p) :] = torch.as_tensor(list(p), dtype=torch.long)
        attention_mask[i, width - len(p) :] = 1
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)  # [B, P]
    return input_ids, attention_mask, position_ids


# ---- sampling --------------------------------------------------------------------------------------


def top_k_filter_(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Set every logit below the row's k-th largest to -inf, in place: [B, V] -> [B, V] (ties at the k-th kept)."""
    if 0 < k < logits.shape[-1]:
        kth = torch.topk(logits, k, dim=-1).values[:, -1:]  # [B, 1]
        logits.masked_fill_(logits < kth, float("-inf"))
    return logits


def top_p_filter_(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filter, in place: keep the smallest set of most likely tokens whose probability mass
    is >= p, set the rest to -inf: [B, V] -> [B, V].

    A token is dropped when the mass of the tokens strictly more likely than it (in sorted order)
    already reaches p; the most likely token is always kept.
    """
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # [B, V], [B, V]
    probs = torch.softmax(sorted_logits, dim=-1)  # [B, V]
    mass_before = probs.cumsum(dim=-1).sub_(probs)  # [B, V] exclusive cumulative mass
    drop_sorted = mass_before >= p  # [B, V]
    drop = torch.empty_like(drop_sorted).scatter_(-1, order, drop_sorted)  # [B, V] back in vocab order
    return logits.masked_fill_(drop, float("-inf"))


class Sampler:
    """Draws one token per row from logits and reports its log-prob.

    Inverse-CDF sampling: one exponential pass gives the unnormalised probabilities (and with
    their sum the log-normaliser of the *unfiltered* distribution), filtered tokens get weight 0,
    an in-place cumulative sum and one uniform number per row pick the token by binary search.
    That is a single pass of transcendentals over the vocabulary and B random numbers, where the
    Gumbel / exponential trick (what ``torch.multinomial`` does) needs a random number and a log
    per vocabulary entry.
    """

    def __init__(self, params: SamplingParams, generator: torch.Generator | Sequence[torch.Generator] | None = None, rows: torch.Tensor | None = None, total_rows: int = 0):
        self.params = params
        self.generator = generator
        # A share of a larger batch (one process's rows under torchrun): draw the uniforms of all
        # ``total_rows`` rows and keep this share's, so a row's sample does not depend on how the
        # batch was split across processes.
        self.rows, self.total_rows = rows, total_rows

    def _uniform(self, total: torch.Tensor) -> torch.Tensor:
        """One uniform number per row -> [B, 1]. With a generator per row, row i's numbers come from
        its own stream alone, so a row samples the same tokens whatever batch it is put in."""
        if self.generator is None or isinstance(self.generator, torch.Generator):
            if self.rows is None:
                return torch.rand(total.shape, generator=self.generator, device=total.device)  # [B, 1]
            return torch.rand((self.total_rows, 1), generator=self.generator, device=total.device)[self.rows.to(total.device)]  # [B, 1]
        if self.rows is not None:
            raise ValueError("a generator per row already makes each row's draws independent of the batch; rows/total_rows apply to one shared generator")
        if len(self.generator) != total.shape[0]:
            raise ValueError(f"{len(self.generator)} generators for a batch of {total.shape[0]} rows; give one per row")
        return torch.cat([torch.rand(1, generator=g, device=g.device) for g in self.generator]).to(total.device)[:, None]  # [B, 1]

    def __call__(self, logits: torch.Tensor, banned: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """logits [B, V] (overwritten) -> (tokens [B] long, logprobs [B] float32).

        ``banned`` [k] long: token ids removed from the distribution (weight 0, and left out of
        the normaliser, so the log-prob is of the distribution actually sampled from before top-k/top-p).
        """
        params = self.params
        logits = logits.float()  # no copy when already float32
        if params.temperature != 1.0:
            logits.div_(params.temperature)
        top = logits.amax(dim=-1, keepdim=True)  # [B, 1]
        weights = torch.sub(logits, top).exp_()  # [B, V] unnormalised probabilities, the largest 1
        if banned is not None and banned.numel():
            weights[:, banned] = 0.0
            logits[:, banned] = float("-inf")  # top-k / top-p then choose among the other tokens
        log_normaliser = weights.sum(dim=-1).log_().add_(top[:, 0])  # [B] of the tempered distribution before top-k / top-p
        if params.greedy:
            tokens = logits.argmax(dim=-1)  # [B] banned tokens are -inf, so never taken
            return tokens, logits.gather(-1, tokens[:, None]).squeeze(-1) - log_normaliser
        if params.top_k or params.top_p < 1.0:
            top_k_filter_(logits, params.top_k)
            top_p_filter_(logits, params.top_p)
            weights.masked_fill_(torch.isneginf(logits), 0.0)
        cdf = weights.cumsum_(dim=-1)  # [B, V] non-decreasing, flat over zero-weight tokens
        total = cdf[:, -1:]  # [B, 1]
        uniform = self._uniform(total)  # [B, 1]
        # Strictly below the total, so the first entry above it is always a token of positive weight.
        target = torch.minimum(uniform * total, total.nextafter(torch.zeros_like(total)))  # [B, 1]
        tokens = torch.searchsorted(cdf, target, right=True)[:, 0]  # [B]
        # The drawn token was never filtered, so its logit is still the tempered one.
        chosen = logits.gather(-1, tokens[:, None]).squeeze(-1)  # [B]
        return tokens, chosen - log_normaliser


# ---- decoders --------------------------------------------------------------------------------------


class DecodePath(str, Enum):
    AUTO = "auto"
    HF = "hf"  # any causal LM through model(..., past_key_values=...)
    LLAMA_STATIC = "llama_static"  # Llama-style layers over a static KV cache owned by tether


class HFDecoder:
    """Model-agnostic decoder: the model's own forward with its ``DynamicCache``.

    The attention mask for prompt + all future tokens is built once; each step passes a view of
    its first columns.
    """

    def __init__(self, model, batch_size: int, max_length: int):
        import inspect

        from transformers import DynamicCache

        self.model = model
        self.cache = DynamicCache(config=model.config) if "config" in inspect.signature(DynamicCache).parameters else DynamicCache()
        self.keep = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
        self.full_mask = torch.ones(batch_size, max_length, dtype=torch.long)  # [B, P + max_new]

    def _logits(self, input_ids, attention_mask, position_ids) -> torch.Tensor:
        out = self.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, past_key_values=self.cache, use_cache=True, **self.keep
        )
        self.cache = out.past_key_values
        return out.logits[:, -1]  # [B, V]

    def prefill(self, input_ids, attention_mask, position_ids) -> torch.Tensor:
        device = input_ids.device
        self.full_mask = self.full_mask.to(device)
        self.full_mask[:, : attention_mask.shape[1]] = attention_mask
        return self._logits(input_ids, attention_mask, position_ids)

    def step(self, tokens: torch.Tensor, positions: torch.Tensor, slot: int) -> torch.Tensor:
        """tokens [B], positions [B], slot = the cache column they occupy -> logits [B, V]."""
        return self._logits(tokens[:, None], self.full_mask[:, : slot + 1], positions[:, None])


def _llama_decoder(model, batch_size: int, max_length: int):
    from tether.rollout.llama_decoder import LlamaStaticDecoder

    return LlamaStaticDecoder(model, batch_size, max_length)


def _llama_supported(model) -> bool:
    from tether.rollout.llama_decoder import supports

    return supports(model)


DECODERS: dict[DecodePath, Callable] = {
    DecodePath.HF: HFDecoder,
    DecodePath.LLAMA_STATIC: _llama_decoder,
}


def resolve_path(model, path: str | DecodePath = DecodePath.AUTO) -> DecodePath:
    path = DecodePath(path)
    if path is DecodePath.AUTO:
        return DecodePath.LLAMA_STATIC if _llama_supported(model) else DecodePath.HF
    return path


# ---- the loop --------------------------------------------------------------------------------------


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompt_ids: list[list[int]],
    params: SamplingParams,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    *,
    path: str | DecodePath = DecodePath.AUTO,
    decoder: Callable | None = None,
    rows: Sequence[int] | None = None,
    total_rows: int = 0,
) -> Rollout:
    """Sample one response per prompt. ``generator`` (on the model's device) makes it reproducible;
    a list of one generator per prompt makes each row's draws independent of the others in the batch.
    ``path`` chooses the decoder (see ``DecodePath``); the default picks the fastest that applies.
    ``decoder``: a factory ``(model, batch, max_length) -> decoder`` (``prefill``/``step`` giving
    next-token logits) that replaces the path's, e.g. ``tether.rollout.mixture``'s geometric
    mixture of two models; the rollout's log-probs are then those of its logits.
    ``rows`` / ``total_rows``: these prompts are rows ``rows`` of a batch of ``total_rows`` split
    across processes; each row then samples what it would in the whole batch (same generator)."""
    if not prompt_ids:
        raise ValueError("no prompts to generate from")
    device = next(model.parameters()).device
    pad_id = pad_token_id(tokenizer)
    stop_ids = torch.tensor(stop_token_ids(tokenizer) if params.stop_at_eos else [], dtype=torch.long, device=device)
    input_ids, attention_mask, position_ids = (t.to(device) for t in left_pad(prompt_ids, pad_id))  # [B, P] each
    batch, width = input_ids.shape
    steps = params.max_new_tokens

    decoder = (decoder or DECODERS[resolve_path(model, path)])(model, batch, width + steps)
    sample = Sampler(params, generator, None if rows is None else torch.as_tensor(list(rows), dtype=torch.long), total_rows)
    tokens_out = torch.full((batch, steps), pad_id, dtype=torch.long, device=device)  # [B, Tr]
    logprobs_out = torch.zeros(batch, steps, device=device)  # [B, Tr]
    mask_out = torch.zeros(batch, steps, dtype=torch.bool, device=device)  # [B, Tr]
    stopped = torch.zeros(batch, dtype=torch.bool, device=device)  # [B]
    next_position = position_ids[:, -1] + 1  # [B]
    pad = torch.full_like(next_position, pad_id)  # [B]

    # A row that may not stop yet cannot draw a stop token; without stop_at_eos nothing stops, so nothing is banned.
    banned_until = min(params.min_new_tokens, steps) if stop_ids.numel() else 0

    logits = decoder.prefill(input_ids, attention_mask, position_ids)  # [B, V]
    used = 0
    for t in range(steps):
        tokens, logprobs = sample(logits, stop_ids if t < banned_until else None)  # [B], [B]
        active = ~stopped  # [B]
        tokens = torch.where(active, tokens, pad)  # stopped rows emit padding
        tokens_out[:, t] = tokens
        logprobs_out[:, t] = logprobs.masked_fill(stopped, 0.0)
        mask_out[:, t] = active
        used = t + 1
        if stop_ids.numel():
            stopped |= torch.isin(tokens, stop_ids) & active
            if bool(stopped.all()):
                break
        if t + 1 < steps:
            logits = decoder.step(tokens, next_position + t, width + t)  # [B, V]

    response_ids, response_mask = tokens_out[:, :used], mask_out[:, :used]
    texts = tokenizer.batch_decode(response_ids.masked_fill(~response_mask, pad_id).tolist(), skip_special_tokens=True)
    return Rollout(
        prompt_ids=[list(p) for p in prompt_ids],
        response_ids=response_ids,
        response_mask=response_mask,
        logprobs=logprobs_out[:, :used],
        texts=texts,
        finished=stopped,
        banned_ids=tuple(stop_ids.tolist()) if banned_until else (),
        banned_until=banned_until,
    )


__all__ = [
    "DECODERS",
    "DecodePath",
    "HFDecoder",
    "Rollout",
    "Sampler",
    "SamplingParams",
    "encode_prompts",
    "generate",
    "left_pad",
    "pad_token_id",
    "resolve_path",
    "stop_token_ids",
    "top_k_filter_",
    "top_p_filter_",
]
