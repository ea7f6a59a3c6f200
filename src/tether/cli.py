"""`tether <command>`: a thin layer over the Python API.

Every training command takes ``--config FILE.yaml`` and ``section.key=value`` overrides; a few
common keys have flags of their own (``--model``, ``--data``, ``--output``, ``--resume``).
``tether <command> --help`` lists every configuration key with its type, default and meaning.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import textwrap
from dataclasses import dataclass, field


@dataclass
class TrainingCommand:
    config: str  # "module:Class" of the configuration dataclass
    runner: str  # "module:function" taking the config
    help: str
    flags: dict[str, str] = field(default_factory=dict)  # extra --flag -> config key


COMMON_FLAGS = {
    "--model": "model.name_or_path",
    "--data": "data.path",
    "--output": "train.output_dir",
    "--max-steps": "train.max_steps",
}

TRAINING_COMMANDS: dict[str, TrainingCommand] = {
    "sft": TrainingCommand("tether.config:SFTConfig", "tether.trainers.sft:run_sft", "Supervised fine-tuning on demonstrations."),
    "dpo": TrainingCommand(
        "tether.config:DPOConfig",
        "tether.trainers.dpo:run_dpo",
        "Offline preference optimisation: DPO, IPO, hinge, SimPO, ORPO, RPO, KTO, listwise DPO. With --online (or dpo.online=true): online DPO, see `tether online-dpo --help`.",
        {"--loss": "dpo.loss", "--beta": "dpo.beta", "--reference": "dpo.reference"},
    ),
    "ppo": TrainingCommand(
        "tether.trainers.ppo:PPOConfig",
        "tether.trainers.ppo:run_ppo",
        "Online RL with PPO: value head (or critic), GAE, clipped surrogate, KL penalty to the reference.",
        {"--reward": "reward.source", "--max-steps": "train.steps"},
    ),
    "grpo": TrainingCommand(
        "tether.trainers.critic_free:GRPOConfig",
        "tether.trainers.critic_free:run_grpo",
        "Online RL with GRPO: group-relative advantages, no critic, KL to the reference in the loss.",
        {"--reward": "reward.source", "--max-steps": "train.steps"},
    ),
    "rloo": TrainingCommand(
        "tether.trainers.critic_free:RLOOConfig",
        "tether.trainers.critic_free:run_rloo",
        "Online RL with RLOO: REINFORCE with a leave-one-out group baseline, KL penalty in the reward.",
        {"--reward": "reward.source", "--max-steps": "train.steps"},
    ),
}

# Nash-MD: a separate entry so the online trainers' table above stays as it is.
TRAINING_COMMANDS["nash"] = TrainingCommand(
    "tether.trainers.nash:NashConfig",
    "tether.trainers.nash:run_nash",
    "Nash-MD: play the policy against its geometric mixture with the reference under a pairwise judge (preference model or reward).",
    {"--reward": "reward.source", "--judge": "nash.judge", "--max-steps": "train.steps"},
)

# Online DPO: sample pairs from the policy, label them with a judge, DPO-family step. `tether dpo
# --online` (or dpo.online=true) is rewritten to this command in main().
TRAINING_COMMANDS["online-dpo"] = TrainingCommand(
    "tether.trainers.online_dpo:OnlineDPOConfig",
    "tether.trainers.online_dpo:run_online_dpo",
    "Online DPO: two replies per prompt from the current policy, labelled by a judge (reward pairwise or a preference model), one DPO-family step.",
    {"--loss": "dpo.loss", "--beta": "dpo.beta", "--reward": "reward.source", "--labeller": "online.labeller", "--max-steps": "train.steps"},
)
ONLINE_DPO_MARKERS = ("--online", "dpo.online=true")


def _route_online_dpo(argv: list[str]) -> list[str]:
    """``tether dpo --online ...`` (or ``dpo.online=true``) -> ``tether online-dpo ...``."""
    if argv[:1] == ["dpo"] and any(a in ONLINE_DPO_MARKERS for a in argv[1:]):
        return ["online-dpo"] + [a for a in argv[1:] if a not in ONLINE_DPO_MARKERS]
    return argv


def _load(ref: str):
    module, name = ref.split(":")
    return getattr(importlib.import_module(module), name)


def _key_table(config_cls) -> str:
    from tether.config import describe

    lines = ["configuration keys (set with key=value, or in a YAML file given by --config):"]
    for key, tp, default, help_text in describe(config_cls):
        lines.append(f"  {key} ({tp}, default {default})")
        for chunk in textwrap.wrap(help_text, 88):
            lines.append(f"      {chunk}")
    return "\n".join(lines)


def _add_training_parser(sub, name: str, command: TrainingCommand) -> None:
    config_cls = _load(command.config)
    p = sub.add_parser(
        name,
        help=command.help,
        description=command.help,
        epilog=_key_table(config_cls),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", help="YAML file with configuration sections")
    for flag, key in {**COMMON_FLAGS, **command.flags}.items():
        p.add_argument(flag, dest=key, metavar=key.split(".")[-1].upper(), help=f"same as {key}=...")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in the output directory")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="configuration overrides, e.g. train.lr=1e-5")
    p.set_defaults(_command=command)


def _run_training(args: argparse.Namespace) -> int:
    from tether.config import load_config

    command: TrainingCommand = args._command
    overrides = [f"{key}={value}" for key, value in vars(args).items() if "." in key and value is not None]
    if args.resume:
        overrides.append("train.resume=true")
    overrides += args.overrides
    config = load_config(_load(command.config), args.config, overrides)
    _load(command.runner)(config)
    return 0


def _generate(args: argparse.Namespace) -> int:
    from tether.models import load_model
    from tether.trainers.sft import sample_completions

    model, tokenizer = load_model(args.model)
    for prompt, text in zip(args.prompt, sample_completions(model, tokenizer, args.prompt, args.max_new_tokens)):
        print(f"### {prompt}\n{text}\n")
    return 0


def _data_check(args: argparse.Namespace) -> int:
    from tether.data import load_records

    loaded = load_records(args.path, kind=args.kind, on_error="skip")
    print(f"{args.path}: {len(loaded.records)} {loaded.kind} records, {len(loaded.skipped)} malformed")
    for err in loaded.skipped[:20]:
        print(f"  {err}")
    if len(loaded.skipped) > 20:
        print(f"  ... and {len(loaded.skipped) - 20} more")
    return 1 if loaded.skipped else 0


def _add_rm_parser(sub) -> None:
    """`tether rm train | eval | score` (sub-commands, so not in TRAINING_COMMANDS)."""
    from tether.trainers.rm import add_rm_commands

    add_rm_commands(sub, _add_training_parser, TrainingCommand)


def _add_pm_parser(sub) -> None:
    """`tether pm train | eval`: pairwise preference models."""
    from tether.trainers.pm import add_pm_commands

    add_pm_commands(sub, _add_training_parser, TrainingCommand)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tether", description="Align language models with human preferences.")
    sub = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    for name, command in TRAINING_COMMANDS.items():
        _add_training_parser(sub, name, command)
    _add_rm_parser(sub)
    _add_pm_parser(sub)

    g = sub.add_parser("generate", help="Generate replies from a model for one or more prompts.", description="Generate replies from a model (greedy).")
    g.add_argument("--model", default="default", help="'default', 'tiny', a model directory or a .gguf file")
    g.add_argument("--prompt", action="append", required=True, help="a user message; repeat for several")
    g.add_argument("--max-new-tokens", type=int, default=96)
    g.set_defaults(_handler=_generate)

    d = sub.add_parser("data", help="Inspect data files.", description="Inspect data files.")
    dsub = d.add_subparsers(dest="data_command", metavar="<action>", required=True)
    dc = dsub.add_parser("check", help="Validate a data file and list malformed rows with file:line and reason.")
    dc.add_argument("path")
    dc.add_argument("--kind", default="auto", choices=["auto", "demonstration", "preference", "ranking", "unpaired", "prompt"])
    dc.set_defaults(_handler=_data_check)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(_route_online_dpo(list(sys.argv[1:] if argv is None else argv)))
    from tether.config import ConfigError

    try:
        if hasattr(args, "_handler"):
            return args._handler(args)
        return _run_training(args)
    except ConfigError as e:
        print(f"tether: configuration error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # a clear one-line message for errors tether raises on purpose
        from tether.data.errors import DataError
        from tether.trainers.common import NonFiniteLossError

        if isinstance(e, (DataError, NonFiniteLossError, FileNotFoundError)):
            print(f"tether: {e}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
