"""The configuration of ``tether pipeline``: one YAML file (``configs/pipeline_sentiment.yaml``).

Each section's settings key the stages that read them (``tether.pipeline.stages``), so changing
``rm.lr`` reruns the reward model and what follows it, never the sampling. The trainers are
configured through their own config classes; ``extra`` passes any of their keys through.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tether.config import ModelConfig, opt


@dataclass
class PipelineData:
    prompts: str = opt("bundled:review_prompts", "Prompts of the task (prompt records or bundled:<name>).")
    eval_prompts: int = opt(32, "Prompts held out from every stage but the evaluation (a fixed, seeded pick, the online trainers' data.eval_prompts).")
    split_seed: int = opt(1234, "Seed of the held-out pick.")


@dataclass
class PipelineSample:
    k: int = opt(4, "Candidate replies sampled per training prompt from the starting model.")
    max_new_tokens: int = opt(32, "Tokens per candidate at most (short replies keep every stage cheap on CPU).")
    temperature: float = opt(1.0, "Sampling temperature of the candidates.")
    seed: int = opt(0, "Sampling seed.")
    batch_size: int = opt(16, "Prompts per generation call.")
    max_minutes: float | None = opt(2.5, "Minutes of sampling at most: no batch starts that would end past them (judged by the last batch's time); the prompts left go unsampled, with a warning (null: sample every prompt). A slow machine gets fewer candidates, not a longer run.")


@dataclass
class PipelineFeedback:
    gold: str = opt("vader", "The gold function the simulated annotators are noisy copies of, and the evaluation's gold reward and judge.")
    annotator_temperatures: list[float] = opt([0.05, 0.1, 0.2], "Bradley-Terry temperature of each simulated annotator (one annotator per value).")
    per_item: int = opt(1, "Annotators labelling each pair.")
    min_gap: float = opt(0.3, "Keep only pairs whose gold scores differ by at least this much: fewer, cleaner pairs teach a small reward model faster.")
    max_pairs_per_prompt: int | None = opt(None, "Pairs labelled per prompt at most (None: every two distinct candidates).")
    rm_eval_fraction: float = opt(0.2, "Fraction of the training prompts whose pairs are held out, labelled by the gold function itself, to measure the reward model.")
    seed: int = opt(0, "Seed of the annotators, the pair sampling and the split.")


@dataclass
class PipelineRM:
    steps: int = opt(80, "Optimizer steps of the reward model.")
    batch_size: int = opt(16, "Pairs per step.")
    lr: float = opt(1e-3, "Learning rate (LoRA).")
    lora_r: int = opt(16, "LoRA rank (alpha = 2r).")
    pooling: str = opt("mean", "rm.pooling: mean over the reply's tokens learns sentiment faster than the last token.")
    max_minutes: float | None = opt(2.0, "Stop the reward model's training after the step that crosses this many minutes (its train.max_minutes; null: steps alone bound it).")
    layers: int = opt(6, "rm.layers: the reward model reads the backbone's first N layers (0: all). Sentiment is lexical: 6 of 30 layers held out as well as all 30 here, at a fifth of the cost per step.")
    extra: list[str] = opt([], "More RMConfig overrides (key=value) passed to the reward-model trainer.")


@dataclass
class PipelineMethod:
    enabled: bool = opt(True, "Train this method.")
    steps: int = opt(40, "Optimizer steps at most.")
    max_minutes: float | None = opt(2.5, "Stop the method's training loop after the step that crosses this many minutes (train.max_minutes; null: steps alone bound it).")
    lr: float = opt(3e-4, "Learning rate (LoRA).")
    kl: float = opt(0.05, "KL strength: kl.coef for PPO and GRPO, dpo.beta for DPO.")
    sweep: list[float] = opt([], "KL strengths trained with --sweep (the frontier); the default `kl` is always one of the points.")
    extra: list[str] = opt([], "More overrides (key=value) for this method's trainer config.")


def _method(**kw):
    return field(default_factory=lambda: PipelineMethod(**kw))


@dataclass
class PipelineEval:
    samples_per_prompt: int = opt(2, "Replies per held-out prompt from each policy and from the starting policy.")
    max_new_tokens: int = opt(32, "Tokens per evaluation reply at most.")
    temperature: float = opt(1.0, "Sampling temperature of the evaluation.")
    bootstrap_rounds: int = opt(1000, "Paired bootstrap rounds over prompts for the intervals.")
    seed: int = opt(0, "Sampling seed of the policies (the starting policy uses seed + 1).")
    report_samples: int = opt(6, "Held-out prompts shown before/after in the report.")
    smooth: int = opt(5, "Steps in the running mean of the per-step curves of the over-optimisation plot.")


@dataclass
class PipelineRun:
    output_dir: str = opt("runs/pipeline", "Run directory: stages/<name>/ per stage, report.html at the top.")
    threads: int | None = opt(2, "torch CPU threads in every stage.")
    sweep: bool = opt(False, "Train each method at every KL strength of its `sweep` list (tether pipeline --sweep).")


@dataclass
class PipelineConfig:
    """The bundled experiment: prompts -> candidates -> simulated annotators -> reward model ->
    PPO, GRPO (on the reward model) and DPO (on the pairs) -> evaluation -> report."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: PipelineData = field(default_factory=PipelineData)
    sample: PipelineSample = field(default_factory=PipelineSample)
    feedback: PipelineFeedback = field(default_factory=PipelineFeedback)
    rm: PipelineRM = field(default_factory=PipelineRM)
    # The defaults are configs/pipeline_sentiment.yaml's, so a YAML of one's own inherits that experiment.
    ppo: PipelineMethod = _method(steps=30, max_minutes=3.0, lr=1e-3, kl=0.05, sweep=[0.01, 0.2], extra=["train.prompts_per_step=8", "train.minibatch_size=8"])
    grpo: PipelineMethod = _method(steps=30, max_minutes=2.25, lr=1e-3, kl=0.04, sweep=[0.005, 0.2])
    dpo: PipelineMethod = _method(steps=30, max_minutes=2.25, lr=6e-4, kl=0.1, sweep=[0.03, 0.5])
    eval: PipelineEval = field(default_factory=PipelineEval)
    run: PipelineRun = field(default_factory=PipelineRun)


METHODS = ("ppo", "grpo", "dpo")

__all__ = ["METHODS", "PipelineConfig", "PipelineData", "PipelineEval", "PipelineFeedback", "PipelineMethod", "PipelineRM", "PipelineRun", "PipelineSample"]
