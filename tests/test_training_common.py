"""The training pieces offline and online trainers share: one optimiser builder, one set of training keys."""

import dataclasses

import torch

torch.set_num_threads(1)


def test_online_and_offline_train_sections_share_the_training_keys():
    """TrainConfig and OnlineTrainConfig both extend TrainingBase: every shared key is declared once
    (an online section only changes defaults), and both name the step count max_steps."""
    from tether.config import TrainConfig, TrainingBase
    from tether.trainers.online import OnlineTrainConfig

    base = {f.name for f in dataclasses.fields(TrainingBase)}
    assert len(base) == 15 and issubclass(TrainConfig, TrainingBase) and issubclass(OnlineTrainConfig, TrainingBase)
    assert base < {f.name for f in dataclasses.fields(TrainConfig)} and base < {f.name for f in dataclasses.fields(OnlineTrainConfig)}
    assert "max_steps" in {f.name for f in dataclasses.fields(OnlineTrainConfig)} and "steps" not in {f.name for f in dataclasses.fields(OnlineTrainConfig)}


def test_one_optimizer_builder_for_a_module_or_parameter_groups():
    """build_optimizer(module) equals build_optimizer([{"params": module's trainable parameters}]):
    matrices decay, 1-D tensors (biases, norms) do not, frozen parameters are left out, and a group's
    own lr (PPO's value head) is kept."""
    from tether.config import TrainConfig
    from tether.trainers.common import build_optimizer
    from tether.trainers.online import OnlineTrainConfig

    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 2))
    model[2].weight.requires_grad_(False)
    cfg = TrainConfig(lr=0.1, weight_decay=0.01)
    a = build_optimizer(model, cfg)
    b = build_optimizer([{"params": list(model.parameters())}], cfg)
    for opt in (a, b):
        (decay, no_decay) = opt.param_groups
        assert [p.shape for p in decay["params"]] == [(4, 3)] and decay["weight_decay"] == 0.01 and decay["lr"] == 0.1
        assert [p.shape for p in no_decay["params"]] == [(4,), (4,), (4,), (2,)] and no_decay["weight_decay"] == 0.0
    online = build_optimizer([{"params": [model[0].weight]}, {"params": [model[0].bias], "lr": 0.5}], OnlineTrainConfig(lr=0.2))
    assert [g["lr"] for g in online.param_groups] == [0.2, 0.5]
