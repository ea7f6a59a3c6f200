"""``policy_eval``: ``tether eval`` run from inside a trainer every N steps and after the last step.

    evaluator = build_policy_evaluator(cfg.policy_eval, cfg.train.output_dir, model, tokenizer,
                                       reference=..., held_out=...)     # before step 1: errors come now
    ...
    evaluator.maybe(step, model, logger, final=step == last)             # in the loop, after each step

Each evaluation is ``tether.evaluate.policy.evaluate_policy`` (nothing is computed here) of the
policy against the model the run started from, on the same prompts with the same seeds every
time, so the figures form curves: ``<output_dir>/eval/step_<N>.json`` (and ``step_<N>.samples.jsonl``),
a ``policy_eval`` line in ``metrics.jsonl`` (``summary_metrics`` without prefix), and the table of
``tether eval`` printed.

The reference is never loaded again: with LoRA it is the policy with its adapters off; otherwise
the trainer's frozen reference copy when it holds one; otherwise a frozen copy of the policy taken
here, which is why the evaluator is built before any checkpoint is loaded into the policy.

Resume: an evaluation at step N always runs before the checkpoint of step N is written, so a run
resumed from step S has every evaluation up to S and runs exactly those after it
(``step > start_step``): none repeated, none skipped.

torch.distributed: the main process alone evaluates (generation reads the whole model, which every
data-parallel process holds; the others would only repeat it) and the others wait at a barrier.
FSDP is refused: the sharded weights cannot generate on one process.
"""

from __future__ import annotations

import copy
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class PolicyEvaluator:
    every: int
    output_dir: Path
    tokenizer: object
    prompts: list
    reference: object  # a module, "adapter" or None
    reference_name: str
    sources: dict
    judges: dict
    settings: object  # EvalSettings
    start_step: int = 0
    evaluated: list[int] = field(default_factory=list)  # steps evaluated by this process in this run
    last: dict = field(default_factory=dict)  # the latest summary figures

    def due(self, step: int, final: bool = False) -> bool:
        """Whether step ``step`` (1-based, done) is evaluated: a multiple of ``every`` or the last
        step, after the step the run resumed from, and not already evaluated in this run."""
        return step > self.start_step and (final or step % self.every == 0) and step not in self.evaluated

    def maybe(self, step: int, policy, logger, final: bool = False) -> dict | None:
        """Evaluate at ``step`` when due (see ``due``); returns the summary figures (main process)."""
        from tether import parallel

        if not self.due(step, final):
            return None
        self.evaluated.append(step)
        figures = None
        if parallel.world().is_main:
            figures = self._evaluate(step, policy, logger)
        parallel.barrier()  # the other processes wait while the main one evaluates
        return figures

    def _evaluate(self, step: int, policy, logger) -> dict:
        from tether.evaluate.command import print_eval
        from tether.evaluate.policy import evaluate_policy, summary_metrics, write_eval

        was_training = policy.training
        policy.eval()
        try:
            result = evaluate_policy(
                policy, self.tokenizer, self.prompts, reference=self.reference, reward_sources=self.sources, judges=self.judges, settings=self.settings
            )
        finally:
            policy.train(was_training)
        result = {"step": step, "policy": f"{self.output_dir} at step {step}", "reference": self.reference_name, **result}
        path = write_eval(result, self.output_dir / "eval", stem=f"step_{step}")
        figures = summary_metrics(result, prefix="")
        logger.log(step, figures, split="policy_eval")
        print_eval(result)
        logger.print(f"step {step}: policy evaluation written to {path}")
        self.last = figures
        return figures

    def summary_rows(self) -> dict[str, float]:
        """The last evaluation's figures for ``summary.json`` (``policy_eval/<name>``)."""
        return {f"policy_eval/{k}": v for k, v in self.last.items()}


def _load_named(specs: list[str], loader, key: str) -> dict:
    """Each spec loaded now (before training), named by its spec; a failure names the key."""
    out = {}
    for i, spec in enumerate(specs):
        try:
            out[spec] = loader(spec)
        except (ValueError, OSError, ImportError, AttributeError) as e:
            raise ValueError(f"{key}[{i}]={spec!r} cannot be loaded: {e}") from e
    return out


def _prompts(cfg, held_out: list | None, data_split: dict | None) -> list:
    from tether.config import ConfigError, PolicyEvalConfig

    if cfg.prompts is None:
        defaults = PolicyEvalConfig()
        changed = [k for k in ("held_out", "split_seed") if getattr(cfg, k) != getattr(defaults, k)]
        if changed:
            raise ConfigError(f"policy_eval.{changed[0]} applies to policy_eval.prompts, which is unset; set policy_eval.prompts too, or leave it at its default")
        if held_out is None:
            raise ConfigError(f"policy_eval.every={cfg.every} needs policy_eval.prompts (a prompts file, e.g. bundled:review_prompts): this trainer holds no prompts of its own")
        if not held_out:
            raise ConfigError(f"policy_eval.every={cfg.every} has no prompts: the run holds out none (data.eval_prompts=0); set data.eval_prompts > 0 or policy_eval.prompts")
        return list(held_out)
    from tether.evaluate.command import held_out_prompts

    prompts = held_out_prompts(cfg.prompts, cfg.held_out, cfg.split_seed, {"data": data_split} if data_split else None)
    if not prompts:
        raise ConfigError(f"policy_eval.prompts={cfg.prompts!r} holds no prompts")
    return prompts


def _reference(cfg, policy, held_reference) -> tuple[object, str]:
    """(reference for ``evaluate_policy``, its name in the report). ``held_reference``: a frozen
    module the trainer already holds (None: it holds none)."""
    from tether.models.lora import is_peft_model

    if cfg.reference == "none":
        if cfg.judges:
            raise ValueError(f"policy_eval.judges={cfg.judges} compare the policy with a reference; they cannot go with policy_eval.reference=none (set policy_eval.judges=[])")
        return None, "none"
    if is_peft_model(policy):
        return "adapter", "the starting model (LoRA adapters off)"
    if held_reference is not None:
        return held_reference, "the starting model (the trainer's frozen reference)"
    print("policy_eval: keeping a frozen copy of the starting model as the evaluation reference (the trainer holds none; LoRA would need no copy)", file=sys.stderr)
    return copy.deepcopy(policy).eval().requires_grad_(False), "the starting model (a frozen copy)"


def build_policy_evaluator(cfg, output_dir, policy, tokenizer, *, held_reference=None, held_out: list | None = None, data_split: dict | None = None, distributed: str = "ddp"):
    """The evaluator ``cfg`` (a ``PolicyEvalConfig``) asks for, or None when ``cfg.every`` is 0.

    Called before training and before a checkpoint is loaded (``policy`` is still the starting
    model). Every setting that cannot apply is an error here: no prompts, a reward source or judge
    that fails to load, judges without a reference, FSDP. ``held_out``: the trainer's own held-out
    prompts (online trainers; None offline); ``data_split``: its ``data`` settings (path,
    eval_prompts, split_seed) to warn when ``policy_eval.prompts`` overlaps its training prompts."""
    from tether import parallel
    from tether.config import ConfigError
    from tether.evaluate.policy import EvalSettings
    from tether.feedback.judges import load_judge
    from tether.rollout.engine import SamplingParams
    from tether.rollout.rewards import load_reward_source

    if cfg.every < 0:
        raise ConfigError(f"policy_eval.every must be >= 0, got {cfg.every}")
    if cfg.every == 0:
        return None
    if parallel.world().distributed and distributed == "fsdp":
        raise ConfigError("policy_eval.every needs train.distributed=ddp: under fsdp the weights are sharded and one process cannot generate (evaluate the saved model with tether eval)")
    if cfg.samples_per_prompt < 1:
        raise ConfigError(f"policy_eval.samples_per_prompt must be >= 1, got {cfg.samples_per_prompt}")
    if cfg.temperature <= 0:
        raise ConfigError(f"policy_eval.temperature must be positive, got {cfg.temperature}")
    if not cfg.rewards and not cfg.judges:
        raise ConfigError("policy_eval.rewards and policy_eval.judges are both empty: nothing to measure but length")
    prompts = _prompts(cfg, held_out, data_split)
    reference, name = _reference(cfg, policy, held_reference)
    sources = _load_named(cfg.rewards, load_reward_source, "policy_eval.rewards")
    judges = _load_named(cfg.judges, load_judge, "policy_eval.judges")
    settings = EvalSettings(
        sampling=SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature),
        samples_per_prompt=cfg.samples_per_prompt,
        seed=cfg.seed,
        bootstrap_rounds=cfg.bootstrap,
    )
    return PolicyEvaluator(cfg.every, Path(output_dir), tokenizer, prompts, reference, name, sources, judges, settings)


def read_evaluations(output_dir) -> list[dict]:
    """Every ``eval/step_<N>.json`` of a run, by step (for plots and tests)."""
    files = sorted(Path(output_dir, "eval").glob("step_*.json"), key=lambda p: int(p.stem.split("_")[1]))
    return [json.loads(p.read_text(encoding="utf-8")) for p in files]


__all__ = ["PolicyEvaluator", "build_policy_evaluator", "read_evaluations"]
