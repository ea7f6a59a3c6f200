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
