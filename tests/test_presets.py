"""Packaged presets reachable by name (not only by a path inside a clone), listed in --help."""

import pytest

from tether.cli import build_parser, main
from tether.config import PRESETS_DIR, ConfigError, load_config, presets, resolve_config_path
from tether.trainers.grpo import GRPOConfig
from tether.trainers.ppo import PPOConfig


def test_presets_ship_in_the_package():
    assert {"grpo_vader", "ppo_vader"} <= set(presets())
    assert all((PRESETS_DIR / f"{name}.yaml").is_file() for name in presets())


@pytest.mark.parametrize("name, cls", [("grpo_vader", GRPOConfig), ("ppo_vader", PPOConfig)])
def test_preset_by_name_from_any_directory_equals_the_file(tmp_path, monkeypatch, name, cls):
    monkeypatch.chdir(tmp_path)  # no configs/ here: the name must resolve to the packaged file
    by_name = load_config(cls, name)
    by_path = load_config(cls, PRESETS_DIR / f"{name}.yaml")
    assert by_name == by_path and by_name.reward.source == "vader"
    assert load_config(cls, f"{name}.yaml") == by_path


def test_a_file_that_exists_wins_over_the_preset(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "grpo_vader.yaml").write_text("train:\n  lr: 0.5\n")
    assert resolve_config_path("grpo_vader.yaml").resolve() == (tmp_path / "grpo_vader.yaml").resolve()
    assert load_config(GRPOConfig, "grpo_vader.yaml").train.lr == 0.5
    assert resolve_config_path("grpo_vader") == PRESETS_DIR / "grpo_vader.yaml"  # the bare name is the preset


def test_unknown_name_lists_the_presets(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"presets: grpo_vader, (\w+, )*ppo_vader"):
        load_config(GRPOConfig, "grpo_vadr")
    with pytest.raises(ConfigError, match="config file not found: sub/grpo_vader.yaml"):
        load_config(GRPOConfig, "sub/grpo_vader.yaml")  # a path with a folder is a path, never a preset
    assert main(["grpo", "--config", "grpo_vadr"]) == 2
    err = capsys.readouterr().err
    assert "grpo_vader" in err and "ppo_vader" in err


@pytest.mark.parametrize("command, listed", [("grpo", "grpo_vader"), ("ppo", "ppo_vader")])
def test_help_lists_the_commands_presets(command, listed):
    subparsers = next(a for a in build_parser()._actions if a.dest == "command")
    help_text = subparsers.choices[command].format_help()
    assert f"presets: {listed}" in " ".join(help_text.split())
