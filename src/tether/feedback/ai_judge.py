"""AI feedback: a local language model judges pairs of responses against a written constitution.

The judge (any causal LM ``tether.models.load_model`` loads; the default model out of the box)
reads a prompt that states the constitution's principles, the request, and the two responses
labelled A and B, and is asked which follows the principles better. Its verdict is the next-token
distribution renormalised over the two letters: P(A) = exp l_A / (exp l_A + exp l_B) = σ(l_A − l_B).
That makes ``AIJudge`` a ``feedback.judges.PairJudge`` (P(first ≻ second), first shown as A).

Small models lean towards one letter whatever the texts; ``judge_pairs`` therefore asks every pair
in both orders (``judges.both_orders``), averages the two readings of the same event, and reports
how often the orders pick different winners. A judge that always says "A" ends at exactly 0.5 on
every pair (a tie) with every pair in disagreement.

Constitutional AI's supervised step is here too (``revise``): the model critiques a response
against one principle (drawn per item) and then rewrites it; the rewrites are demonstrations
(``prompt``/``completion`` JSONL) for ``tether sft``. Judge labels are pairs (``chosen``/``rejected``
plus the judge's probability) for ``tether rm train`` and ``tether dpo``: RLAIF.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

CONSTITUTIONS = Path(__file__).resolve().parent.parent / "configs" / "constitutions"
LETTERS = ("A", "B")


@dataclass(frozen=True)
class Constitution:
    principles: tuple[str, ...]
    source: str


def load_constitution(path: str | None = None) -> Constitution:
    """A constitution from YAML: a list of principles, or a mapping whose ``principles`` is one.
    ``None`` or ``"default"`` is the packaged default; a bare name is a packaged one (``sentiment``)."""
    import yaml

    if path is None or (not Path(path).exists() and (CONSTITUTIONS / f"{path}.yaml").is_file()):
        path = CONSTITUTIONS / f"{path or 'default'}.yaml"
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such constitution file (packaged ones: {', '.join(p.stem for p in sorted(CONSTITUTIONS.glob('*.yaml')))})")
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    principles = data.get("principles") if isinstance(data, dict) else data
    if not isinstance(principles, list) or not principles:
        raise ValueError(f"{path}: expected a non-empty YAML list of principles, or a mapping with a 'principles' list")
    for i, p in enumerate(principles):
        if not isinstance(p, str) or not p.strip():
            raise ValueError(f"{path}: principles[{i}]: expected a non-empty string, got {p!r}")
    return Constitution(tuple(p.strip() for p in principles), str(path))


def judge_messages(constitution: Constitution, prompt: str, response_a: str, response_b: str) -> list[dict]:
    """The question the judge answers with its next token, as one user turn."""
    rules = "\n".join(f"{i}. {p}" for i, p in enumerate(constitution.principles, start=1))
    text = (
        f"Compare two responses to a request, following these principles:\n{rules}\n\n"
        f"Request:\n{prompt}\n\nResponse A:\n{response_a}\n\nResponse B:\n{response_b}\n\n"
        "Which response follows the principles better? Answer with a single letter, A or B."
    )
    return [{"role": "user", "content": text}]


def letter_ids(tokenizer) -> tuple[int, int]:
    """Token ids of "A" and "B"; each must be a single token."""
    ids = []
    for letter in LETTERS:
        encoded = tokenizer.encode(letter, add_special_tokens=False)
        if len(encoded) != 1:
            raise ValueError(f"the judge's tokenizer splits {letter!r} into {len(encoded)} tokens; the judge reads one token per letter")
        ids.append(int(encoded[0]))
    return ids[0], ids[1]


class AIJudge:
    """A causal LM judging pairs under a constitution: ``judge(prompts, first, second)`` -> [B]
    P(first ≻ second), the first response shown as A. ``batch_size`` pairs per forward pass."""

    def __init__(self, model, tokenizer, constitution: Constitution, batch_size: int = 8, name: str = "ai-judge"):
        self.model, self.tokenizer, self.constitution = model, tokenizer, constitution
        self.batch_size = batch_size
        self.name = name
        self.ids = letter_ids(tokenizer)
        self.letter_mass: list[float] = []  # P(A) + P(B) under the full next-token distribution, per item judged

    @torch.no_grad()
    def letter_logits(self, messages: Sequence[list[dict]]) -> torch.Tensor:
        """[B, 2] next-token logits of "A" and "B" after each conversation's generation prompt."""
        import inspect

        from tether.rollout.engine import encode_prompts, left_pad, pad_token_id

        device = next(self.model.parameters()).device
        keep = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(self.model.forward).parameters else {}
        was_training = self.model.training
        self.model.eval()
        out = []
        try:
            for lo in range(0, len(messages), self.batch_size):
                ids = encode_prompts(self.tokenizer, list(messages[lo : lo + self.batch_size]))
                input_ids, attention_mask, position_ids = (t.to(device) for t in left_pad(ids, pad_token_id(self.tokenizer)))  # [b, P] each
                logits = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **keep).logits[:, -1].float()  # [b, V]
                log_probs = torch.log_softmax(logits, dim=-1)  # [b, V]
                pair = logits[:, list(self.ids)]  # [b, 2]
                self.letter_mass += log_probs[:, list(self.ids)].exp().sum(dim=-1).tolist()
                out.append(pair.cpu())
        finally:
            self.model.train(was_training)
        return torch.cat(out)  # [B, 2]

    def __call__(self, prompts: list[str], first: list[str], second: list[str]) -> torch.Tensor:
        from tether.feedback.judges import _check

        _check(prompts, first, second)
        logits = self.letter_logits([judge_messages(self.constitution, p, a, b) for p, a, b in zip(prompts, first, second)])  # [B, 2]
        return torch.softmax(logits, dim=-1)[:, 0]  # [B] P("A") renormalised over the two letters


@dataclass
class JudgeReport:
    pairs: int
    ties: int
    disagreements: int  # pairs whose two orders picked different winners
    letter_mass: float  # mean P(A) + P(B) of the full next-token distribution: how much the judge answers with a letter at all

    @property
    def disagreement_rate(self) -> float:
        return self.disagreements / self.pairs if self.pairs else float("nan")


def judge_pairs(judge, items: Sequence[tuple], tie_margin: float = 0.0) -> tuple[list[dict], JudgeReport, torch.Tensor]:
    """Label ``(prompt, a, b)`` items in both orders. Returns the pair rows (``chosen``, ``rejected``,
    ``judge_prob`` = P(chosen ≻ rejected) ≥ 0.5, ``orders_disagree``; ties, |P − 0.5| ≤ ``tie_margin``,
    left out), the report, and P(a ≻ b) [N] for every item (ties included)."""
    from tether.feedback.judges import both_orders
    from tether.feedback.sample import prompt_text

    if not items:
        raise ValueError("no pairs to judge")
    start = len(getattr(judge, "letter_mass", []))
    verdict = both_orders(judge, [prompt_text(p) for p, _, _ in items], [a for _, a, _ in items], [b for _, _, b in items])
    prob = verdict.prob.double()  # [N] P(a ≻ b)
    rows, ties = [], 0
    for (prompt, a, b), p, disagree in zip(items, prob.tolist(), verdict.disagree.tolist()):
        if abs(p - 0.5) <= tie_margin:
            ties += 1
            continue
        chosen, rejected, p_chosen = (a, b, p) if p > 0.5 else (b, a, 1.0 - p)
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected, "judge_prob": p_chosen, "orders_disagree": bool(disagree), "judge": getattr(judge, "name", "judge")})
    mass = getattr(judge, "letter_mass", [])[start:]
    report = JudgeReport(len(items), ties, int(verdict.disagree.sum()), sum(mass) / len(mass) if mass else float("nan"))
    return rows, report, prob


# ---- critique, then revise --------------------------------------------------------------------


def critique_messages(principle: str, prompt: str, response: str) -> list[dict]:
    return [
        {
            "role": "user",
            "content": f"Request:\n{prompt}\n\nResponse:\n{response}\n\n"
            f"Point out briefly where the response falls short of this principle: {principle}",
        }
    ]


def revision_messages(principle: str, prompt: str, response: str, critique: str) -> list[dict]:
    return critique_messages(principle, prompt, response) + [
        {"role": "assistant", "content": critique},
        {"role": "user", "content": "Rewrite the response so that it follows the principle and addresses the critique. Reply with the rewritten response only."},
    ]


def _greedy(model, tokenizer, conversations: list[list[dict]], max_new_tokens: int, batch_size: int) -> list[str]:
    """Greedy replies through the rollout engine (top_k = 1 keeps only the most likely token)."""
    from tether.rollout.engine import SamplingParams, encode_prompts, generate

    params = SamplingParams(max_new_tokens=max_new_tokens, top_k=1)
    was_training = model.training
    model.eval()
    try:
        texts = []
        for lo in range(0, len(conversations), batch_size):
            texts += generate(model, tokenizer, encode_prompts(tokenizer, conversations[lo : lo + batch_size]), params).texts
    finally:
        model.train(was_training)
    return [t.strip() for t in texts]


def revise(
    model, tokenizer, constitution: Constitution, items: Sequence[tuple], *, max_new_tokens: int = 128, batch_size: int = 8, seed: int = 0
) -> tuple[list[dict], int]:
    """Critique each ``(prompt, response)`` against one principle drawn for it, then rewrite it.
    Returns demonstration rows (``prompt``, ``completion`` = the revision, plus ``original``,
    ``critique``, ``principle``) and how many empty revisions were left out."""
    from tether.feedback.sample import prompt_text

    rng = random.Random(seed)
    principles = [rng.choice(constitution.principles) for _ in items]
    texts = [prompt_text(p) for p, _ in items]
    critiques = _greedy(model, tokenizer, [critique_messages(c, t, r) for c, t, (_, r) in zip(principles, texts, items)], max_new_tokens, batch_size)
    revisions = _greedy(
        model, tokenizer, [revision_messages(c, t, r, k) for c, t, (_, r), k in zip(principles, texts, items, critiques)], max_new_tokens, batch_size
    )
    rows, empty = [], 0
    for (prompt, response), principle, critique, revision in zip(items, principles, critiques, revisions):
        if not revision:
            empty += 1
            continue
        rows.append({"prompt": prompt, "completion": revision, "original": response, "critique": critique, "principle": principle})
    if empty:
        print(f"warning: {empty} of {len(items)} revisions came out empty and were left out", file=sys.stderr)
    return rows, empty


__all__ = [
    "AIJudge",
    "Constitution",
    "JudgeReport",
    "critique_messages",
    "judge_messages",
    "judge_pairs",
    "letter_ids",
    "load_constitution",
    "revise",
    "revision_messages",
]
