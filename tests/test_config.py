"""Configuration: YAML + overrides, with errors that name the key and what is accepted."""

import pytest

from tether.config import ConfigError, SFTConfig, describe, load_config


def test_defaults_yaml_and_overrides_layer_in_order(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 0.001\n  batch_size: 4\ndata:\n  pack: true\n")
    cfg = load_config(SFTConfig, path, ["train.lr=3e-4", "model.name_or_path=tiny", "train.max_steps=7"])
    assert cfg.train.lr == pytest.approx(3e-4)  # override beats the file
    assert cfg.train.batch_size == 4  # the file beats the default
    assert cfg.data.pack is True
    assert cfg.train.max_steps == 7
    assert cfg.model.name_or_path == "tiny"
    assert cfg.train.micro_batch_size == SFTConfig().train.micro_batch_size


def test_unknown_key_names_it_and_suggests():
    with pytest.raises(ConfigError, match=r"unknown key 'train.lrr'.*Did you mean 'lr'"):
        load_config(SFTConfig, None, ["train.lrr=1"])
    with pytest.raises(ConfigError, match=r"unknown key 'trian'.*Accepted: model, lora, data, train"):
        load_config(SFTConfig, None, ["trian.lr=1"])


def test_unknown_key_in_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  paht: x.jsonl\n")
    with pytest.raises(ConfigError, match=r"unknown key 'data.paht'.*Did you mean 'path'"):
        load_config(SFTConfig, path)


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lr=fast", r"train.lr: expected float, got 'fast'"),
        ("train.batch_size=2.5", r"train.batch_size: expected int"),
        ("data.pack=maybe", r"data.pack: expected true or false"),
        ("data.truncation=chop", r"data.truncation: expected one of 'truncate_prompt', 'truncate_completion', 'drop'"),
        ("train", r"not of the form key=value"),
        ("train=3", r"'train' is a section"),
    ],
)
def test_wrong_values_are_clear(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(SFTConfig, None, [override])


def test_optional_and_list_values():
    cfg = load_config(SFTConfig, None, ["train.max_steps=none", "train.adam_betas=[0.8, 0.9]", "train.sample_prompts=a,b"])
    assert cfg.train.max_steps is None
    assert cfg.train.adam_betas == [0.8, 0.9]
    assert cfg.train.sample_prompts == ["a", "b"]


def test_every_field_has_help():
    rows = describe(SFTConfig)
    assert len(rows) > 20
    missing = [key for key, _, _, help_text in rows if not help_text]
    assert missing == []


def test_section_overrides_keep_the_commands_own_defaults():
    from tether.config import DPOConfig

    cfg = load_config(DPOConfig, None, ["data.max_length=128"])
    assert cfg.data.path == "auto"  # DPO's default (the bundled set that fits the loss), not the shared DataConfig's
    assert cfg.data.max_length == 128
    assert ("data.path", "str", "'auto'") == describe(DPOConfig)[[r[0] for r in describe(DPOConfig)].index("data.path")][:3]


# ---- one name per key across commands --------------------------------------------------------


@pytest.mark.parametrize("command", ["ppo", "grpo", "rloo", "nash", "online-dpo"])
def test_old_online_step_key_is_refused_naming_the_new_one(command, capsys):
    """Every command counts steps with train.max_steps; the online commands' old train.steps, in an
    override, a YAML mapping or on the command line, is an error that names train.max_steps."""
    from tether.cli import TRAINING_COMMANDS, _load, main
    from tether.config import ConfigError, from_dict, load_config

    cls = _load(TRAINING_COMMANDS[command].config)
    assert load_config(cls, None, ["train.max_steps=3"]).train.max_steps == 3
    with pytest.raises(ConfigError, match=r"'train\.steps' was renamed: set train\.max_steps"):
        load_config(cls, None, ["train.steps=3"])
    with pytest.raises(ConfigError, match=r"train\.max_steps"):
        from_dict(cls, {"train": {"steps": 3}})
    assert main([command, "train.steps=3"]) == 2
    assert "train.max_steps" in capsys.readouterr().err


def test_grpo_beta_is_refused_for_the_one_kl_coefficient():
    """GRPO's KL weight is kl.coef like every online command's (default 0.04 there); setting the old
    grpo.beta, which used to override kl.coef silently, is an error naming kl.coef."""
    from tether.config import ConfigError, from_dict, load_config
    from tether.trainers.grpo import GRPOConfig

    assert GRPOConfig().kl.coef == 0.04 and load_config(GRPOConfig, None, ["kl.coef=0.1"]).kl.coef == 0.1
    with pytest.raises(ConfigError, match=r"'grpo\.beta' was renamed: set kl\.coef"):
        load_config(GRPOConfig, None, ["grpo.beta=0.1"])
    with pytest.raises(ConfigError, match=r"kl\.coef"):
        from_dict(GRPOConfig, {"grpo": {"beta": 0.1}})


def test_literal_choices_come_from_the_enums_that_define_the_variants():
    """A config field's accepted values are its enum's values (plus 'auto' where it applies), so a
    new variant is added in one place; a value outside them is refused naming the choices."""
    import typing

    from tether.config import ConfigError, DataConfig, PreferenceConfig, load_config
    from tether.data.encode import Truncation
    from tether.losses.preference import PreferenceLoss
    from tether.models.reward import Pooling
    from tether.rl.kl import KLEstimator
    from tether.trainers.online import KLConfig
    from tether.trainers.ppo import Critic, PPOSection
    from tether.trainers.rm import RewardLoss, RewardSection

    def args(cls, name):
        return typing.get_args(typing.get_type_hints(cls)[name])

    assert args(PreferenceConfig, "loss") == tuple(v.value for v in PreferenceLoss)
    assert args(DataConfig, "truncation") == tuple(v.value for v in Truncation)
    assert args(KLConfig, "estimator") == tuple(v.value for v in KLEstimator)
    assert args(PPOSection, "critic") == tuple(v.value for v in Critic)
    assert args(RewardSection, "loss") == ("auto", *(v.value for v in RewardLoss))
    assert args(RewardSection, "pooling") == tuple(v.value for v in Pooling)
    from tether.config import DPOConfig

    with pytest.raises(ConfigError, match="'dpo', 'cdpo'"):
        load_config(DPOConfig, None, ["dpo.loss=nope"])
