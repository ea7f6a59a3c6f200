"""Reward models: a causal-LM backbone and a linear head read at each sequence's last real token.

The score of (prompt, response) is ``head(h_last)``, where ``h_last`` is the backbone's final
hidden state at the response's last token (its end-of-turn marker), the one position that has
seen the whole text. ``pooling="mean"`` reads the mean of the final hidden states over the
response's tokens instead: every response token then reaches the head directly, which helps
where the preference is spread over the words (sentiment) and data is scarce. A head has one
output per named objective (for example helpful, harmless, honest); the scalar reward is a
weighted sum chosen at scoring time.

Saved as a Hugging Face model directory (the backbone, LoRA adapters merged) plus
``reward_head.safetensors`` and ``reward_config.json``, so the backbone also loads with plain
``transformers``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from enum import Enum
from pathlib import Path

import torch
from torch import nn

HEAD_FILE = "reward_head.safetensors"


class Pooling(str, Enum):
    LAST = "last"  # the final hidden state at the response's last token
    MEAN = "mean"  # the mean final hidden state over the response's tokens


POOLINGS = tuple(p.value for p in Pooling)
CONFIG_FILE = "reward_config.json"


def last_token_index(batch) -> torch.Tensor:
    """Flat index (row * T + t) of each sequence's last real token in a TokenBatch -> [N] long.

    ``sequence_ids[t]`` names the sequence whose *next* token position t predicts, so a sequence
    of n tokens owns positions 0..n-2 and its last token sits one step after the last position it
    owns. This holds in the padded and the packed layout alike (trailing pads own nothing).
    A shared-prefix batch (``tether.data.shared_prefix``) carries the indices itself.
    """
    if getattr(batch, "last_index", None) is not None:
        return batch.last_index
    seq_ids = batch.sequence_ids.reshape(-1)  # [R*T]
    flat = torch.arange(seq_ids.numel(), device=seq_ids.device)  # [R*T]
    owned = seq_ids >= 0
    last_owned = torch.full((batch.num_sequences,), -1, dtype=torch.long, device=seq_ids.device)
    last_owned = last_owned.scatter_reduce(0, seq_ids[owned], flat[owned], reduce="amax")  # [N]
    if (last_owned < 0).any():
        raise ValueError("a sequence of fewer than two tokens has no reply to score")
    return last_owned + 1


def mean_over_responses(hidden: torch.Tensor, batch, last: torch.Tensor) -> torch.Tensor:
    """Mean final hidden state over each sequence's response tokens -> [N, H].

    The loss positions (``loss_mask``) are those predicting a response token, so each response
    token sits one step after one, in every layout (padded, packed, shared prefix), and
    ``sequence_ids`` names its sequence. An empty response falls back to its last token
    (``last``, flat indices [N]).
    """
    flat = hidden.reshape(-1, hidden.shape[-1])  # [R*T, H]
    seq_ids = batch.sequence_ids.reshape(-1).to(hidden.device)  # [R*T]
    predicts_response = batch.loss_mask.reshape(-1).to(hidden.device) & (seq_ids >= 0)  # [R*T]
    owned = predicts_response.nonzero().squeeze(1)  # [M] flat positions predicting a response token
    owner = seq_ids[owned]  # [M]
    sums = flat.new_zeros(batch.num_sequences, flat.shape[1]).index_add(0, owner, flat[owned + 1])  # [N, H]
    counts = torch.bincount(owner, minlength=batch.num_sequences).unsqueeze(1)  # [N, 1]
    return torch.where(counts > 0, sums / counts.clamp(min=1).to(flat.dtype), flat[last])


def last_token_index_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Column of each row's last attended token, for right *or* left padding -> [R] long."""
    width = attention_mask.shape[1]
    columns = torch.arange(width, device=attention_mask.device).expand_as(attention_mask)  # [R, T]
    return torch.where(attention_mask.bool(), columns, torch.full_like(columns, -1)).amax(dim=1)


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that start at 0 on each row's first real token, so left padding shifts nothing -> [R, T]."""
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)


def activate_adapter(peft_model, name: str) -> None:
    """Route a PEFT model's LoRA layers through adapter ``name``, leaving every ``requires_grad`` as it was.

    PEFT's ``set_adapter`` also makes the chosen adapter trainable and freezes the others; a
    forward pass must not change what the optimizer trains, so the flags are put back.
    """
    if peft_model.active_adapter == name:
        return
    flags = {p: p.requires_grad for p in peft_model.parameters()}
    peft_model.set_adapter(name)
    for p, flag in flags.items():
        p.requires_grad_(flag)


def _as_messages(prompt) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


class RewardModel(nn.Module):
    """Backbone + ``nn.Linear(H, len(objectives))``; ``forward(batch) -> rewards [N, O]``.

    ``adapter`` names the PEFT adapter this model runs with when several reward models share one
    LoRA backbone (an ensemble); ``None`` uses the backbone as it is.
    """

    # What a saved directory holds beside the backbone; a subclass (the pairwise preference
    # model) saves under its own names so the two kinds of directory are never mistaken.
    head_file = HEAD_FILE
    config_file = CONFIG_FILE

    def __init__(
        self,
        backbone: nn.Module,
        tokenizer=None,
        objectives: Sequence[str] = ("reward",),
        weights: Mapping[str, float] | None = None,
        max_length: int = 512,
        adapter: str | None = None,
        head: nn.Linear | None = None,
        pooling: str = "last",
    ):
        super().__init__()
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.objectives = list(objectives)
        if len(set(self.objectives)) != len(self.objectives) or not self.objectives:
            raise ValueError(f"objective names must be distinct and non-empty, got {self.objectives}")
        self.default_weights = dict(weights) if weights else {name: 1.0 / len(self.objectives) for name in self.objectives}
        self.max_length = max_length
        self.adapter = adapter
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        self.pooling = pooling
        hidden = backbone.config.get_text_config().hidden_size if hasattr(backbone.config, "get_text_config") else backbone.config.hidden_size
        if head is None:
            head = nn.Linear(hidden, len(self.objectives))
            # Small outputs at the start keep the first Bradley–Terry steps in the sigmoid's linear range.
            nn.init.normal_(head.weight, std=1.0 / (hidden + 1) ** 0.5)
            nn.init.zeros_(head.bias)
        self.head = head

    # ---- forward passes ----------------------------------------------------------------------

    def _hidden(self, input_ids, position_ids, attention_mask) -> torch.Tensor:
        from tether.models.forward import forward_hidden

        if self.adapter is not None:
            activate_adapter(self.backbone, self.adapter)
        return forward_hidden(self.backbone, input_ids, position_ids, attention_mask)  # [R, T, H]

    def forward(self, batch) -> torch.Tensor:
        """Rewards of every sequence of a TokenBatch (padded or packed) or a SharedPrefixBatch -> [N, O]."""
        hidden = self._hidden(batch.input_ids, batch.position_ids, batch.attention_mask)  # [R, T, H]
        last = last_token_index(batch).to(hidden.device)  # [N]
        if self.pooling == "mean":
            pooled = mean_over_responses(hidden, batch, last)  # [N, H]
        else:
            pooled = hidden.reshape(-1, hidden.shape[-1])[last]  # [N, H]
        return self.head(pooled.to(self.head.weight.dtype))  # [N, O]

    def forward_padded(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Rewards of a padded batch, right- or left-padded as a tokenizer left it -> [R, O].

        Reads the last token whatever ``pooling`` says: the mask does not tell prompt from response."""
        if self.pooling != "last":
            raise ValueError("forward_padded reads the last token; a mean-pooled reward model scores TokenBatches (forward) or text (score)")
        positions = positions_from_mask(attention_mask)  # [R, T]
        hidden = self._hidden(input_ids, positions, attention_mask)  # [R, T, H]
        last = last_token_index_from_mask(attention_mask)  # [R]
        h_last = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # [R, H]
        return self.head(h_last.to(self.head.weight.dtype))  # [R, O]

    # ---- scoring -----------------------------------------------------------------------------

    def combine(self, rewards: torch.Tensor, weights: Mapping[str, float] | None = None) -> torch.Tensor:
        """Weighted sum over objectives: [..., O] -> [...]. Unnamed objectives get weight 0."""
        weights = self.default_weights if weights is None else weights
        unknown = set(weights) - set(self.objectives)
        if unknown:
            raise KeyError(f"unknown objectives {sorted(unknown)}; this model has {self.objectives}")
        w = torch.tensor([float(weights.get(name, 0.0)) for name in self.objectives], dtype=rewards.dtype, device=rewards.device)  # [O]
        return rewards @ w

    def encode_pairs(self, prompts, responses) -> list[tuple[list[int], int]]:
        """(input_ids, prompt_len) for each prompt/response, cut to ``max_length`` from the prompt's start."""
        from tether.data.encode import encode, truncate

        if self.tokenizer is None:
            raise ValueError("this RewardModel has no tokenizer; pass one to score text")
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        out = []
        for prompt, response in zip(prompts, responses):
            encoded = encode(self.tokenizer, _as_messages(prompt), response)
            encoded = truncate(encoded, self.max_length, "truncate_prompt") or truncate(encoded, self.max_length, "truncate_completion")
            out.append((encoded.input_ids, encoded.prompt_len))
        return out

    @torch.no_grad()
    def score_sequences(self, sequences: Sequence[tuple[list[int], int]], batch_size: int = 16) -> torch.Tensor:
        """Per-objective rewards of tokenized ``(input_ids, prompt_len)`` sequences -> [S, O] float32 on the CPU.

        The one scoring loop: ``score_all`` (text), ``tether rm eval`` and ``rm score`` all run it.
        Length-sorted batches waste little on padding; results come back in input order."""
        from tether.data.batches import collate

        was_training = self.training
        self.eval()
        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i][0]))
        out = torch.zeros(len(sequences), len(self.objectives))
        device = self.head.weight.device
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            batch = collate([[sequences[i]] for i in chunk], self.tokenizer.pad_token_id).to(device)
            out[chunk] = self(batch).float().cpu()
        self.train(was_training)
        return out

    def score_all(self, prompts, responses, batch_size: int = 16) -> torch.Tensor:
        """Per-objective rewards of each (prompt, response) -> [N, O]. Prompts: text or message lists."""
        return self.score_sequences(self.encode_pairs(prompts, responses), batch_size)

    def score(self, prompts, responses, batch_size: int = 16, weights: Mapping[str, float] | None = None) -> torch.Tensor:
        """Scalar reward of each (prompt, response) -> [N]: objectives combined with ``weights``."""
        return self.combine(self.score_all(prompts, responses, batch_size), weights)

    # ---- saving ------------------------------------------------------------------------------

    def config_dict(self) -> dict:
        return {"objectives": self.objectives, "weights": self.default_weights, "max_length": self.max_length, "pooling": self.pooling}

    def save_pretrained(self, out_dir: str | os.PathLike) -> Path:
        """HF model directory (LoRA merged) + ``reward_head.safetensors`` + ``reward_config.json``."""
        from safetensors.torch import save_file

        from tether.models.saving import save_model

        out_dir = save_model(self.backbone, self.tokenizer, out_dir)
        save_file({"weight": self.head.weight.detach().contiguous(), "bias": self.head.bias.detach().contiguous()}, str(out_dir / self.head_file))
        (out_dir / self.config_file).write_text(json.dumps(self.config_dict(), indent=2), encoding="utf-8")
        return out_dir

    @classmethod
    def from_pretrained(cls, model_dir: str | os.PathLike, dtype: torch.dtype = torch.float32, trust_remote_code: bool = False) -> RewardModel:
        from safetensors.torch import load_file

        from tether.models.loading import load_model

        model_dir = Path(model_dir)
        if not (model_dir / cls.config_file).is_file():
            raise FileNotFoundError(f"{model_dir} is not a {cls.__name__} directory (no {cls.config_file})")
        config = json.loads((model_dir / cls.config_file).read_text(encoding="utf-8"))
        backbone, tokenizer = load_model(model_dir, dtype=dtype, trust_remote_code=trust_remote_code)
        model = cls(backbone, tokenizer, config["objectives"], config.get("weights"), config.get("max_length", 512), pooling=config.get("pooling", "last"))
        state = load_file(str(model_dir / cls.head_file))
        with torch.no_grad():
            model.head.weight.copy_(state["weight"])
            model.head.bias.copy_(state["bias"])
        return model


def is_reward_model_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / CONFIG_FILE).is_file()


__all__ = ["Pooling", "RewardModel", "activate_adapter", "is_reward_model_dir", "last_token_index", "last_token_index_from_mask", "mean_over_responses", "positions_from_mask"]
