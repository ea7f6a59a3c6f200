"""Reward-model ensembles: K members whose disagreement measures how far an input is from the data.

Members differ in seed (head initialisation, adapter initialisation, data order) and, when
trained with the bootstrap, in which examples they saw. Where they were trained they agree;
away from it they extrapolate differently, so their spread is an uncertainty signal. The
penalised reward ``mean − λ·std`` lets an RL trainer avoid regions where the reward is a guess.

Two layouts:

* ``lora``: one frozen backbone, K named PEFT adapters (``default``, ``member-1``, ...) and K
  heads. Memory is one backbone plus K small adapters; a score runs the backbone once per member.
* ``full``: K independent RewardModels (full fine-tunes), for small backbones.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from tether.models.reward import RewardModel

ENSEMBLE_FILE = "reward_ensemble.json"


def member_adapter_name(k: int) -> str:
    return "default" if k == 0 else f"member-{k}"  # PEFT names the first adapter "default"


class RewardEnsemble(nn.Module):
    def __init__(self, members: Sequence[RewardModel], layout: str, penalty: float = 1.0):
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)
        self.layout = layout
        self.penalty = penalty

    # ---- construction -------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        backbone: nn.Module,
        tokenizer,
        size: int,
        objectives: Sequence[str] = ("reward",),
        weights: Mapping[str, float] | None = None,
        max_length: int = 512,
        lora: Mapping | None = None,
        seed: int = 0,
        penalty: float = 1.0,
        pooling: str = "last",
    ) -> RewardEnsemble:
        """K fresh members on ``backbone``. ``lora``: keyword arguments of ``apply_lora`` (shared
        backbone, one adapter per member), or None for K full copies of the backbone."""
        members = []
        if lora is not None:
            from tether.models.lora import apply_lora

            torch.manual_seed(seed)
            shared = apply_lora(backbone, **lora)
            for k in range(1, size):
                torch.manual_seed(seed + k)  # each adapter's A matrix starts differently
                shared.add_adapter(member_adapter_name(k), copy.deepcopy(shared.peft_config["default"]))
            for k in range(size):
                torch.manual_seed(seed + k)
                members.append(RewardModel(shared, tokenizer, objectives, weights, max_length, adapter=member_adapter_name(k), pooling=pooling))
            return cls(members, "lora", penalty)
        for k in range(size):
            torch.manual_seed(seed + k)
            copy_k = backbone if k == size - 1 else copy.deepcopy(backbone)
            members.append(RewardModel(copy_k, tokenizer, objectives, weights, max_length, pooling=pooling))
        return cls(members, "full", penalty)

    def trainable_member(self, k: int) -> RewardModel:
        """Member k with only its own weights trainable (its adapter and head, or its whole model)."""
        for p in self.parameters():
            p.requires_grad_(False)
        member = self.members[k]
        if self.layout == "lora":
            tag = f".{member.adapter}."
            for name, p in member.backbone.named_parameters():
                if "lora_" in name and tag in name:
                    p.requires_grad_(True)
        else:
            for p in member.backbone.parameters():
                p.requires_grad_(True)
        for p in member.head.parameters():
            p.requires_grad_(True)
        return member

    # ---- scoring ------------------------------------------------------------------------------

    @property
    def objectives(self) -> list[str]:
        return self.members[0].objectives

    @property
    def tokenizer(self):
        return self.members[0].tokenizer

    def forward(self, batch) -> torch.Tensor:
        """Every member's rewards for a TokenBatch -> [K, N, O]."""
        return torch.stack([member(batch) for member in self.members])

    def score_all(self, prompts, responses, batch_size: int = 16) -> torch.Tensor:
        """Per-member, per-objective rewards -> [K, N, O]."""
        return torch.stack([member.score_all(prompts, responses, batch_size) for member in self.members])

    def score(self, prompts, responses, batch_size: int = 16, weights: Mapping[str, float] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean [N], std [N]) over members of the combined reward. std is 0 for a single member."""
        combined = self.members[0].combine(self.score_all(prompts, responses, batch_size), weights)  # [K, N]
        return mean_and_spread(combined)

    def penalized_score(self, prompts, responses, penalty: float | None = None, batch_size: int = 16, weights: Mapping[str, float] | None = None) -> torch.Tensor:
        """Uncertainty-penalised reward mean − λ·std -> [N]; λ defaults to the ensemble's ``penalty``."""
        mean, std = self.score(prompts, responses, batch_size, weights)
        return penalized(mean, std, self.penalty if penalty is None else penalty)

    def penalized(self, penalty: float | None = None, weights: Mapping[str, float] | None = None) -> Callable:
        """A ``(prompts, responses) -> rewards [N]`` function for the RL trainers."""
        return lambda prompts, responses: self.penalized_score(prompts, responses, penalty, weights=weights)

    # ---- saving -------------------------------------------------------------------------------

    def save_pretrained(self, out_dir: str | os.PathLike) -> Path:
        """``full``: ``member-k/`` reward model directories. ``lora``: ``base/`` (the backbone without
        adapters, HF format), ``adapters/`` (PEFT format, one folder per member) and ``heads/``."""
        import shutil

        from safetensors.torch import save_file

        from tether.models.saving import save_model

        out_dir = Path(out_dir)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        out_dir.mkdir(parents=True)
        first = self.members[0]
        config = {**first.config_dict(), "layout": self.layout, "size": len(self.members), "penalty": self.penalty}
        if self.layout == "full":
            for k, member in enumerate(self.members):
                member.save_pretrained(out_dir / f"member-{k}")
        else:
            shared = first.backbone
            names = [m.adapter for m in self.members]
            shared.save_pretrained(str(out_dir / "adapters"), selected_adapters=names)
            with shared.disable_adapter():
                base = copy.deepcopy(shared).unload()  # the frozen base weights, adapters removed
            save_model(base, first.tokenizer, out_dir / "base")
            (out_dir / "heads").mkdir()
            for k, member in enumerate(self.members):
                save_file({"weight": member.head.weight.detach().contiguous(), "bias": member.head.bias.detach().contiguous()}, str(out_dir / "heads" / f"member-{k}.safetensors"))
            config["adapters"] = names
        (out_dir / ENSEMBLE_FILE).write_text(json.dumps(config, indent=2), encoding="utf-8")
        return out_dir

    @classmethod
    def from_pretrained(cls, model_dir: str | os.PathLike, dtype: torch.dtype = torch.float32) -> RewardEnsemble:
        from peft import PeftModel
        from safetensors.torch import load_file

        from tether.models.loading import load_model

        model_dir = Path(model_dir)
        config = json.loads((model_dir / ENSEMBLE_FILE).read_text(encoding="utf-8"))
        if config["layout"] == "full":
            members = [RewardModel.from_pretrained(model_dir / f"member-{k}", dtype) for k in range(config["size"])]
            return cls(members, "full", config.get("penalty", 1.0))
        base, tokenizer = load_model(model_dir / "base", dtype=dtype)
        names = config["adapters"]
        adapters = model_dir / "adapters"
        # PEFT saves the "default" adapter at the top level and every other one in a folder of its name.
        shared = PeftModel.from_pretrained(base, str(adapters), adapter_name=names[0])
        for name in names[1:]:
            shared.load_adapter(str(adapters / name), adapter_name=name)
        members = []
        for k, name in enumerate(names):
            member = RewardModel(shared, tokenizer, config["objectives"], config.get("weights"), config.get("max_length", 512), adapter=name, pooling=config.get("pooling", "last"))
            state = load_file(str(model_dir / "heads" / f"member-{k}.safetensors"))
            with torch.no_grad():
                member.head.weight.copy_(state["weight"])
                member.head.bias.copy_(state["bias"])
            members.append(member)
        ensemble = cls(members, "lora", config.get("penalty", 1.0))
        ensemble.requires_grad_(False)
        return ensemble


def mean_and_spread(member_rewards: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and sample standard deviation over the member axis: [K, ...] -> ([...], [...])."""
    if member_rewards.shape[0] == 1:
        return member_rewards[0], torch.zeros_like(member_rewards[0])
    return member_rewards.mean(0), member_rewards.std(0, correction=1)


def penalized(mean: torch.Tensor, std: torch.Tensor, penalty: float) -> torch.Tensor:
    """mean − λ·std: a pessimistic reward that is lower where the members disagree."""
    return mean - penalty * std


def is_ensemble_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / ENSEMBLE_FILE).is_file()


def load_reward(model_dir: str | os.PathLike):
    """A RewardModel or a RewardEnsemble, whichever ``model_dir`` holds."""
    return RewardEnsemble.from_pretrained(model_dir) if is_ensemble_dir(model_dir) else RewardModel.from_pretrained(model_dir)


__all__ = ["RewardEnsemble", "is_ensemble_dir", "load_reward", "mean_and_spread", "member_adapter_name", "penalized"]
