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
        {"--reward": "reward.source"},
    ),
    "grpo": TrainingCommand(
        "tether.trainers.grpo:GRPOConfig",
        "tether.trainers.grpo:run_grpo",
        "Online RL with GRPO: group-relative advantages, no critic, KL to the reference (kl.coef) in the loss.",
        {"--reward": "reward.source"},
    ),
    "rloo": TrainingCommand(
        "tether.trainers.rloo:RLOOConfig",
        "tether.trainers.rloo:run_rloo",
        "Online RL with RLOO: REINFORCE with a leave-one-out group baseline, KL penalty in the reward.",
        {"--reward": "reward.source"},
    ),
}

# Nash-MD: a separate entry so the online trainers' table above stays as it is.
TRAINING_COMMANDS["nash"] = TrainingCommand(
    "tether.trainers.nash:NashConfig",
    "tether.trainers.nash:run_nash",
    "Nash-MD: play the policy against its geometric mixture with the reference under a pairwise judge (preference model or reward).",
    {"--reward": "reward.source", "--judge": "nash.judge", "--max-steps": "train.max_steps"},
)

# Online DPO: sample pairs from the policy, label them with a judge, DPO-family step. `tether dpo
# --online` (or dpo.online=true) is rewritten to this command in main().
TRAINING_COMMANDS["online-dpo"] = TrainingCommand(
    "tether.trainers.online_dpo:OnlineDPOConfig",
    "tether.trainers.online_dpo:run_online_dpo",
    "Online DPO: two replies per prompt from the current policy, labelled by a judge (reward pairwise or a preference model), one DPO-family step.",
    {"--loss": "dpo.loss", "--beta": "dpo.beta", "--reward": "reward.source", "--labeller": "online.labeller", "--max-steps": "train.max_steps"},
)
ONLINE_DPO_MARKERS = ("--online", "dpo.online=true")

# Iterative DPO: rounds of sample -> label -> DPO -> held-out evaluation, each kept under round_<k>/.
TRAINING_COMMANDS["iterate"] = TrainingCommand(
    "tether.trainers.iterate:IterateConfig",
    "tether.trainers.iterate:run_iterate",
    "Iterative DPO: rounds of sampling from the current policy, labelling (a judge, an ensemble with an uncertainty rule, simulated annotators or people's exported labels), DPO from the previous round's policy and a held-out win-rate; a killed run resumes where it stopped.",
    {"--rounds": "iterate.rounds", "--labeller": "iterate.labeller", "--prompts": "iterate.prompts"},
)


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


def _preset_names(command: str) -> str:
    """The packaged presets for ``command`` (named ``<command>_*``), for its --help."""
    from tether.config import presets

    names = [p for p in presets() if p.startswith(f"{command}_")]
    return "presets: " + ", ".join(names) if names else "none ship for this command"


def _add_training_parser(sub, name: str, command: TrainingCommand) -> None:
    config_cls = _load(command.config)
    p = sub.add_parser(
        name,
        help=command.help,
        description=command.help,
        epilog=_key_table(config_cls),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", help=f"YAML file with configuration sections, or a packaged preset by name ({_preset_names(name)})")
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
    """`tether generate`: replies from tether's rollout engine (tether.rollout.replies), printed
    and optionally written as JSONL, one row per reply."""
    import json

    from tether.config import ConfigError
    from tether.rollout.engine import SamplingParams

    prompts: list = list(args.prompt or [])
    if args.prompts:
        from tether.data import load_records

        prompts += [record.prompt for record in load_records(args.prompts, kind="prompt").records]
    if not prompts:
        raise ConfigError("no prompts: give --prompt TEXT (repeatable) and/or --prompts FILE")
    greedy = args.temperature == 0
    try:  # settings checked before the model loads
        params = SamplingParams(args.max_new_tokens, 1.0 if greedy else args.temperature, args.top_p, args.top_k, greedy=greedy)
        if greedy and args.samples > 1:
            raise ValueError(f"--samples {args.samples} with temperature 0 (greedy) gives identical replies; set --temperature above 0")
    except ValueError as err:
        raise ConfigError(str(err)) from None

    from tether.models import load_model
    from tether.rollout.replies import sample_replies

    model, tokenizer = load_model(args.model)
    replies = sample_replies(model, tokenizer, prompts, params, args.samples, args.seed, args.batch_size)
    for reply in replies:
        head = reply.prompt[-1]["content"] + (f"  [sample {reply.sample + 1}/{args.samples}]" if args.samples > 1 else "")
        print(f"### {head}\n{reply.text}\n")
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            for reply in replies:
                prompt = reply.prompt[0]["content"] if len(reply.prompt) == 1 else reply.prompt
                row = {"prompt": prompt, "completion": reply.text, "sample": reply.sample, "seed": args.seed, "temperature": args.temperature,
                       "top_p": args.top_p, "top_k": args.top_k, "new_tokens": reply.new_tokens, "finished": reply.finished}
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        print(f"wrote {len(replies)} replies to {args.output}")
    return 0


def _add_generate_parser(sub) -> None:
    g = sub.add_parser(
        "generate",
        help="Generate replies from a model for one or more prompts.",
        description="Generate replies with tether's rollout engine: greedy (--temperature 0, the default) or sampled, several per prompt.",
    )
    g.add_argument("--model", default="default", help="'default', 'tiny', a model directory or a .gguf file")
    g.add_argument("--prompt", action="append", help="a user message; repeat for several")
    g.add_argument("--prompts", metavar="FILE", help="a data file whose prompts to reply to (any kind: prompts, demonstrations, pairs, ...)")
    g.add_argument("--max-new-tokens", type=int, default=96)
    g.add_argument("--temperature", type=float, default=0.0, help="0: greedy (the most likely token each step); above 0: sample")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling: draw from the smallest set of tokens holding this much probability (1: off)")
    g.add_argument("--top-k", type=int, default=0, help="draw from the k most likely tokens (0: off)")
    g.add_argument("--samples", "-n", type=int, default=1, help="replies per prompt")
    g.add_argument("--seed", type=int, default=0, help="seed of the sampler: the same seed gives the same replies")
    g.add_argument("--batch-size", type=int, default=16, help="rows (prompt x sample) generated together")
    g.add_argument("--output", metavar="FILE.jsonl", help="also write one JSON row per reply: prompt, completion, sample, seed, settings")
    g.set_defaults(_handler=_generate)


def _data_check(args: argparse.Namespace) -> int:
    from tether.data import load_records

    loaded = load_records(args.path, kind=args.kind, on_error="skip", score_key=args.score_key)
    print(f"{args.path}: {len(loaded.records)} {loaded.kind} records, {len(loaded.skipped)} malformed")
    from tether.data.rankings import has_ties

    tied = [r for r in loaded.records if has_ties(r)]
    if tied:
        print(f"  {len(tied)} rankings have tied scores (first at {tied[0].source}); training resolves ties by data.ties (drop, file_order or error)")
    for err in loaded.skipped[:20]:
        print(f"  {err}")
    if len(loaded.skipped) > 20:
        print(f"  ... and {len(loaded.skipped) - 20} more")
    return 1 if loaded.skipped else 0


def _parse_weights(text: str | None) -> dict[str, float] | None:
    if not text:
        return None
    out = {}
    for item in text.split(","):
        name, _, value = item.partition("=")
        if not value:
            raise ValueError(f"--weights expects name=value pairs separated by commas, got {item!r}")
        out[name.strip()] = float(value)
    return out


def _rm_eval(args) -> int:
    from tether.evaluate.reward_model import run_rm_eval

    run_rm_eval(args.model, args.data, args.max_length, args.batch_size, args.output)
    return 0


def _rm_score(args) -> int:
    from tether.evaluate.reward_model import run_rm_score

    run_rm_score(args.model, args.input, args.output, _parse_weights(args.weights), args.penalty, args.batch_size)
    return 0


def _add_rm_parser(sub) -> None:
    """``tether rm train | eval | score`` (sub-commands, so not in TRAINING_COMMANDS)."""
    rm = sub.add_parser("rm", help="Reward models: train, evaluate, score.", description="Reward models: train, evaluate, score.")
    actions = rm.add_subparsers(dest="rm_command", metavar="<action>", required=True)
    _add_training_parser(
        actions,
        "train",
        TrainingCommand(
            "tether.trainers.rm:RMConfig",
            "tether.trainers.rm:run_rm_train",
            "Train a reward model (or an ensemble) on preference pairs or rankings.",
            {"--ensemble-size": "rm.ensemble_size"},
        ),
    )
    e = actions.add_parser("eval", help="Held-out accuracy, calibration (ECE), reward distribution and the length-only baseline.")
    e.add_argument("--model", required=True, help="a directory written by `tether rm train` (<output>/model)")
    e.add_argument("--data", default="bundled:preferences", help="preference pairs or rankings")
    e.add_argument("--max-length", type=int, default=None, help="tokens per sequence (default: the model's)")
    e.add_argument("--batch-size", type=int, default=16)
    e.add_argument("--output", default=None, help="also write the metrics as JSON here")
    e.set_defaults(_handler=_rm_eval)
    s = actions.add_parser("score", help="Score the completions of a data file; writes JSONL with rewards.")
    s.add_argument("--model", required=True, help="a directory written by `tether rm train` (<output>/model)")
    s.add_argument("--input", required=True, help="demonstrations (prompt, completion), pairs or rankings")
    s.add_argument("--output", required=True, help="JSONL file to write")
    s.add_argument("--weights", default=None, help="objective weights, e.g. helpful=1,harmless=0.5 (default: the model's)")
    s.add_argument("--penalty", type=float, default=None, help="ensembles: lambda in mean - lambda * std (default: the one saved)")
    s.add_argument("--batch-size", type=int, default=16)
    s.set_defaults(_handler=_rm_score)


def _add_eval_parser(sub) -> None:
    """`tether eval` (its arguments and handler live in tether.evaluate.command)."""
    from tether.evaluate.command import add_eval_command

    add_eval_command(sub)


def _add_annotate_parser(sub) -> None:
    """`tether annotate create | add-annotator | add-admin | serve | export | report` (the web app)."""
    from tether.feedback.annotate.commands import add_annotate_commands

    add_annotate_commands(sub)


def _pm_eval(args) -> int:
    from tether.trainers.pm import run_pm_eval

    run_pm_eval(args.model, args.data, args.batch_size, args.output)
    return 0


def _add_pm_parser(sub) -> None:
    """``tether pm train | eval``: pairwise preference models (sub-commands, as ``tether rm``)."""
    pm = sub.add_parser("pm", help="Pairwise preference models: train, evaluate.", description="Pairwise preference models P(a beats b | prompt): train, evaluate.")
    actions = pm.add_subparsers(dest="pm_command", metavar="<action>", required=True)
    _add_training_parser(
        actions, "train", TrainingCommand("tether.trainers.pm:PMConfig", "tether.trainers.pm:run_pm_train", "Train a pairwise preference model on preference pairs or rankings.")
    )
    e = actions.add_parser("eval", help="Held-out accuracy and calibration (ECE) of P(winner beats loser).")
    e.add_argument("--model", required=True, help="a directory written by `tether pm train` (<output>/model)")
    e.add_argument("--data", default="bundled:preferences", help="preference pairs or rankings")
    e.add_argument("--batch-size", type=int, default=16)
    e.add_argument("--output", default=None, help="also write the metrics as JSON here")
    e.set_defaults(_handler=_pm_eval)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tether", description="Align language models with human preferences.")
    sub = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    for name, command in TRAINING_COMMANDS.items():
        _add_training_parser(sub, name, command)
    _add_rm_parser(sub)
    _add_pm_parser(sub)
    _add_eval_parser(sub)
    _add_annotate_parser(sub)

    # `tether pipeline`: the whole loop as resumable stages, with an HTML report.
    from tether.pipeline.command import add_pipeline_command

    add_pipeline_command(sub)

    _add_generate_parser(sub)

    # Collecting feedback: `tether sample`, `tether label` (simulated annotators), `tether judge` (AI feedback).
    from tether.feedback.cli import add_feedback_commands

    add_feedback_commands(sub)

    d = sub.add_parser("data", help="Inspect data files.", description="Inspect data files.")
    dsub = d.add_subparsers(dest="data_command", metavar="<action>", required=True)
    dc = dsub.add_parser("check", help="Validate a data file and list malformed rows with file:line and reason.")
    dc.add_argument("path")
    dc.add_argument("--kind", default="auto", choices=["auto", "demonstration", "preference", "ranking", "unpaired", "prompt"])
    dc.add_argument("--score-key", default=None, help="rankings of scored objects: the score's field, as data.score_key (e.g. annotations.helpfulness.Rating)")
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
