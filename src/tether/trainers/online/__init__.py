"""What every online RL loop (PPO, GRPO, RLOO) shares; each algorithm's step is in its own file
(``tether.trainers.ppo``, ``grpo``, ``rloo``) and reads top to bottom:

    prompts -> generate (G samples each) -> score -> reference log-probs -> advantages -> update

Only the advantages and the loss differ between algorithms. The shared pieces never call back
into an algorithm's module:

* ``config``     the configuration sections (``OnlineSections``, ``OnlineTrainConfig``, ...);
* ``rollout``    prompts, sampling, scoring: ``collect`` is the first half of every step;
* ``batch``      ``ResponseBatch`` and the policy's log-probs / hidden states over responses;
* ``reference``  the reference policy (adapters off, or a frozen copy) and ``uses_reference``;
* ``update``     minibatches and ``optimizer_step`` (backward, clip, step);
* ``run``        ``start_run``, ``StepState`` (resume, logging, monitors, checkpoints, time
                 budget), the held-out evaluation and ``finish_run``.

The names below are re-exported so ``from tether.trainers.online import X`` reaches any of them.
"""

from tether.trainers.online.batch import ResponseBatch, banned_renormaliser, entropy_surrogate, policy_logprobs, response_hidden, response_logprobs
from tether.trainers.online.config import KLConfig, OnlineSections, OnlineTrainConfig, PromptDataConfig, RewardConfig, SamplingConfig, default_lora
from tether.trainers.online.reference import Reference, uses_reference
from tether.trainers.online.rollout import Collected, collect, load_prompts, load_reward, prompt_text, sample_responses, sampling_params, score, step_generator
from tether.trainers.online.run import RunSetup, StepState, Timer, evaluate_held_out, finish_run, held_out, log_step, make_kl_controller, out_of_time, rollout_metrics, start_run
from tether.trainers.online.update import minibatches, optimizer_step, single_update

__all__ = [
    "Collected",
    "KLConfig",
    "OnlineSections",
    "OnlineTrainConfig",
    "PromptDataConfig",
    "Reference",
    "ResponseBatch",
    "RewardConfig",
    "RunSetup",
    "SamplingConfig",
    "StepState",
    "Timer",
    "banned_renormaliser",
    "collect",
    "default_lora",
    "entropy_surrogate",
    "evaluate_held_out",
    "finish_run",
    "held_out",
    "load_prompts",
    "load_reward",
    "log_step",
    "make_kl_controller",
    "minibatches",
    "optimizer_step",
    "out_of_time",
    "policy_logprobs",
    "prompt_text",
    "response_hidden",
    "response_logprobs",
    "rollout_metrics",
    "sample_responses",
    "sampling_params",
    "score",
    "single_update",
    "start_run",
    "step_generator",
    "uses_reference",
]
