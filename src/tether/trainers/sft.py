"""Supervised fine-tuning: maximise the log-likelihood of demonstration completions.

The loss is the mean negative log-probability over every completion token of a step (prompt
tokens carry no loss), normalised by the step's token count so accumulated micro-batches equal
one full batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tether.config import SFTConfig, save_yaml
from tether.data.batches import collate
from tether.trainers.offline import Example, FitResult, fit


@dataclass
class SFTObjective:
    pad_id: int
    pack: bool = False
    row_tokens: int = 512
    chunk_size: int = 1024

    def units(self, examples: list[Example]) -> float:
        # Position t predicts token t+1, so a sequence with prompt_len p and n tokens trains n - max(p, 1) targets.
        return float(sum(len(ids) - max(plen, 1) for e in examples for ids, plen in e.sequences))

    def loss(self, model: torch.nn.Module, examples: list[Example]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        from tether.losses.sft import sft_loss
        from tether.models import forward_token_logprobs
        from tether.parallel import device

        batch = collate([e.sequences for e in examples], self.pad_id, self.pack, self.row_tokens).to(device())
        logprobs = forward_token_logprobs(model, batch, chunk_size=self.chunk_size)  # [R, T], 0 off the mask
        nll, _ = sft_loss(logprobs, batch.loss_mask)  # [R] summed token NLL per row
        # The loop divides by units() (the step's completion tokens): the mean token NLL, whatever the
        # micro-batching. sft_loss's own token counts would repeat that, so its metrics are not logged.
        return nll.sum(), {}


@torch.no_grad()
def sample_completions(model, tokenizer, prompts: list[str], max_new_tokens: int = 64) -> list[str]:
    """Greedy replies to user messages, for a quick look at what a model learned."""
    model.eval()
    replies = []
    for prompt in prompts:
        messages = [{"role": "user", "content": prompt}]
        if getattr(tokenizer, "chat_template", None):
            ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
        else:
            ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        ids = ids.to(next(model.parameters()).device)
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        replies.append(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip())
    return replies


def run_sft(cfg: SFTConfig) -> FitResult:
    """Fine-tune ``cfg.model`` on the demonstrations in ``cfg.data``; saves the model to ``<output_dir>/model``."""
    from pathlib import Path

    from tether.evaluate.periodic import build_policy_evaluator
    from tether.models import save_model
    from tether.parallel import is_main
    from tether.trainers.common import load_trainable_model
    from tether.trainers.distributed import save_final_model
    from tether.trainers.prepare import prepare_data

    out = Path(cfg.train.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_yaml(cfg, out / "config.yaml")
    model, tokenizer = load_trainable_model(cfg.model, cfg.lora, cfg.train.seed)
    data = prepare_data(tokenizer, cfg.data, "demonstration", cfg.train.seed)
    for line in data.report:
        print(line)
    objective = SFTObjective(tokenizer.pad_token_id, cfg.data.pack, cfg.data.max_length, cfg.model.chunk_size)
    evaluator = build_policy_evaluator(cfg.policy_eval, out, model, tokenizer, distributed=cfg.train.distributed)
    result = fit(model, objective, data.train, data.eval, cfg.train, title="sft", report=data.report, policy_eval=evaluator)
    model = result.model  # whole (None on the other processes of a sharded run)
    save_final_model(save_model, model, tokenizer, out / "model")
    print(f"saved model to {out / 'model'}")
    if cfg.train.sample_prompts and is_main():
        for prompt, reply in zip(cfg.train.sample_prompts, sample_completions(model, tokenizer, cfg.train.sample_prompts, cfg.train.sample_max_new_tokens)):
            print(f"\n### {prompt}\n{reply}")
    return result
