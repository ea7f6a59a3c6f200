"""Runs ``tether iterate`` on the tiny model in a subprocess for tests/test_iterate.py, optionally
SIGKILLing itself at a chosen point (a real kill: no exception handlers, no flushing).

    python iterate_driver.py OUT KILL     KILL: none | mid-sample | between-rounds | mid-dpo
"""

import os
import signal
import sys

import torch

torch.set_num_threads(1)


def config(out: str, **iterate):
    from tether.config import from_dict
    from tether.trainers.iterate import IterateConfig

    raw = {
        "model": {"name_or_path": "tiny"},
        "train": {"output_dir": out, "max_steps": 4, "batch_size": 2, "micro_batch_size": 2, "lr": 3e-3, "warmup_ratio": 0.0, "save_every": 2, "progress": False, "threads": 1, "sample_prompts": [], "resume": True},
        "dpo": {"beta": 0.5},
        "sampling": {"max_new_tokens": 6, "batch_size": 2},
        "iterate": {"rounds": 2, "prompts_per_round": 4, "labeller": "toy_rewards:LowercaseReward", "eval_prompts": 0, **iterate},
    }
    return from_dict(IterateConfig, raw)


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def main(out: str, kill: str) -> None:
    import tether.trainers.dpo as dpo
    import tether.trainers.iterate as it
    from tether.feedback import sample

    real_sample, real_loss = sample.sample_file, dpo.PreferenceObjective.loss

    def sample_file(model, tokenizer, prompts, output, **kw):
        if kill == "between-rounds" and "round_2" in str(output):
            _die()  # round 1 is done, round 2 not begun
        if kill == "mid-sample" and "round_1" in str(output):
            kw["after_batch"] = lambda written: _die()  # one batch of round 1's samples on disk
        return real_sample(model, tokenizer, prompts, output, **kw)

    calls = {"n": 0}

    def loss(self, model, examples):
        calls["n"] += 1
        if kill == "mid-dpo" and calls["n"] == 3:  # the first DPO this process runs dies in its step 3 (checkpoint at step 2 on disk)
            _die()
        return real_loss(self, model, examples)

    sample.sample_file = sample_file
    dpo.PreferenceObjective.loss = loss
    it.run_iterate(config(out))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
