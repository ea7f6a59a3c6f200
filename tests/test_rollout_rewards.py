"""Reward sources: function rewards, reward models and ensembles, pairwise judges, loading by spec."""

import sys
import types

import pytest
import torch

from tether.rollout.rewards import (
    EnsembleReward,
    FunctionReward,
    PreferenceModelReward,
    RewardModelReward,
    RewardSource,
    load_reward_source,
    vader_reward,
)


def test_function_reward_per_pair_and_batched():
    per_pair = FunctionReward(lambda prompt, response: len(response) - len(prompt))
    out = per_pair.score(["ab", "a"], ["abcd", "a"])
    assert out["reward"].dtype == torch.float32 and out["reward"].tolist() == [2.0, 0.0]
    batched = FunctionReward(lambda prompts, responses: torch.tensor([float(r.count("x")) for r in responses]), batched=True, name="xs")
    assert batched.name == "xs" and batched.score(["p", "q"], ["xx", "x y x x"])["reward"].tolist() == [2.0, 3.0]
    assert isinstance(per_pair, RewardSource)
    with pytest.raises(ValueError):
        FunctionReward(lambda ps, rs: [1.0], batched=True).score(["a", "b"], ["c", "d"])  # wrong count
    with pytest.raises(ValueError):
        per_pair.score(["a"], ["b", "c"])


class FakeEnsemble:
    """Three members with fixed combined rewards per response; mimics RewardEnsemble.score."""

    penalty = 0.5

    def __init__(self, member_rewards):
        self.member_rewards = torch.tensor(member_rewards)  # [K, B]

    def score(self, prompts, responses, batch_size=16, weights=None):
        from tether.models.reward_ensemble import mean_and_spread

        return mean_and_spread(self.member_rewards)


def test_ensemble_penalty_arithmetic():
    """Members [1, 2, 3] on response 0 and [4, 4, 4] on response 1:
    mean 2 and 4; sample std sqrt(((1-2)^2 + 0 + (3-2)^2) / 2) = 1 and 0.
    penalty 0.5 (the ensemble's own): 2 - 0.5 = 1.5 and 4. penalty 2: 2 - 2 = 0 and 4."""
    ensemble = FakeEnsemble([[1.0, 4.0], [2.0, 4.0], [3.0, 4.0]])
    out = EnsembleReward(ensemble).score(["p", "p"], ["a", "b"])
    torch.testing.assert_close(out["mean"], torch.tensor([2.0, 4.0]))
    torch.testing.assert_close(out["spread"], torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(out["reward"], torch.tensor([1.5, 4.0]))
    torch.testing.assert_close(EnsembleReward(ensemble, penalty=2.0).score(["p", "p"], ["a", "b"])["reward"], torch.tensor([0.0, 4.0]))


def test_real_ensemble_and_reward_model_on_tiny_backbone(tmp_path):
    """Reward sources around real (tiny, untrained) models agree with the models' own scores,
    and load back from the saved directories by path."""
    from tether.models import tiny_model_and_tokenizer
    from tether.models.reward import RewardModel
    from tether.models.reward_ensemble import RewardEnsemble

    torch.set_num_threads(1)
    backbone, tokenizer = tiny_model_and_tokenizer()
    prompts, responses = ["hi", "hello"], ["good day", "bad"]
    model = RewardModel(backbone, tokenizer)
    direct = model.score(prompts, responses)
    torch.testing.assert_close(RewardModelReward(model).score(prompts, responses)["reward"], direct)
    model.save_pretrained(tmp_path / "rm")
    loaded = load_reward_source(str(tmp_path / "rm"))
    assert isinstance(loaded, RewardModelReward)
    torch.testing.assert_close(loaded.score(prompts, responses)["reward"], direct, atol=1e-5, rtol=0)

    ensemble = RewardEnsemble.create(tiny_model_and_tokenizer(seed=2)[0], tokenizer, size=3, penalty=0.25)
    mean, std = ensemble.score(prompts, responses)
    out = EnsembleReward(ensemble).score(prompts, responses)
    torch.testing.assert_close(out["reward"], mean - 0.25 * std)
    assert (out["spread"] > 0).all()  # members differ in head initialisation
    ensemble.save_pretrained(tmp_path / "ens")
    loaded = load_reward_source(str(tmp_path / "ens"), penalty=1.0)
    assert isinstance(loaded, EnsembleReward)
    torch.testing.assert_close(loaded.score(prompts, responses)["reward"], mean - std, atol=1e-5, rtol=0)
    # A penalty on a single reward model would do nothing: refused, naming the setting.
    with pytest.raises(ValueError, match=r"reward.uncertainty_penalty=1.0 applies only to a saved reward ensemble"):
        load_reward_source(str(tmp_path / "rm"), penalty=1.0)


def test_uncertainty_penalty_without_an_ensemble_is_refused(monkeypatch):
    """vader and a Python function have no members to disagree: penalty set is an error, and so
    through the online trainers' loader; penalty None (the default) passes."""
    from tether.trainers.online import load_reward

    module = types.ModuleType("tether_test_penalty_module")
    module.shout = lambda prompt, response: 1.0
    monkeypatch.setitem(sys.modules, "tether_test_penalty_module", module)
    for spec in ("vader", "tether_test_penalty_module:shout"):
        with pytest.raises(ValueError, match=f"reward.uncertainty_penalty=0.5 applies only to a saved reward ensemble directory, but the reward source '{spec}'"):
            load_reward(spec, 0.5)
        assert load_reward(spec, None).name in ("vader", "shout")


def length_judge(prompts, a, b):
    """P(a beats b) = sigmoid(len(a) - len(b)): longer wins."""
    return torch.sigmoid(torch.tensor([float(len(x) - len(y)) for x, y in zip(a, b)]))


def test_preference_reward_against_given_baselines():
    """Baseline 'xx': 'xxx' wins with sigmoid(1), 'x' with sigmoid(-1), 'xx' with 0.5."""
    source = PreferenceModelReward(length_judge)
    out = source.score(["p", "q", "r"], ["xxx", "x", "xx"], baselines=["xx", "xx", "xx"])
    s1 = torch.sigmoid(torch.tensor(1.0)).item()
    torch.testing.assert_close(out["reward"], torch.tensor([s1, 1 - s1, 0.5]))


def test_preference_reward_within_groups():
    """Prompt p has responses of lengths 1, 2, 3; prompt q has one response.
    Length 1: mean(sigmoid(-1), sigmoid(-2)); length 2: mean(sigmoid(1), sigmoid(-1)) = 0.5;
    length 3: mean(sigmoid(2), sigmoid(1)); the lone response to q: 0.5 (nothing to compare)."""
    source = PreferenceModelReward(length_judge)
    out = source.score(["p", "q", "p", "p"], ["a", "zzzz", "aa", "aaa"])
    sig = lambda x: torch.sigmoid(torch.tensor(float(x)))  # noqa: E731
    expected = torch.stack([(sig(-1) + sig(-2)) / 2, torch.tensor(0.5), torch.tensor(0.5), (sig(2) + sig(1)) / 2])
    torch.testing.assert_close(out["reward"], expected)


def test_preference_reward_symmetric_cancels_position_bias():
    """A judge that adds +0.2 to whichever response comes first: P(a>b) = 0.5 + 0.2 for equal
    responses. Symmetric scoring: (0.7 + 1 - 0.7) / 2 = 0.5."""
    biased = lambda prompts, a, b: torch.full((len(a),), 0.7)  # noqa: E731
    assert PreferenceModelReward(biased).score(["p"], ["a"], baselines=["b"])["reward"].item() == pytest.approx(0.7)
    assert PreferenceModelReward(biased, symmetric=True).score(["p"], ["a"], baselines=["b"])["reward"].item() == pytest.approx(0.5)


def test_vader_positive_beats_negative():
    source = vader_reward()
    out = source.score(["Review it.", "Review it."], ["A wonderful, delightful film. I loved it!", "Awful, boring and painful. I hated it."])
    positive, negative = out["reward"].tolist()
    assert positive > 0.5 and negative < -0.5
    assert load_reward_source("vader").name == "vader"


def test_missing_vader_names_the_install_command(monkeypatch):
    """vaderSentiment is a main dependency; where it is missing anyway, asking for the VADER judge
    fails at set-up with the command that installs it."""
    from tether.feedback import simulated

    monkeypatch.setitem(sys.modules, "vaderSentiment", None)  # makes the import raise ImportError
    monkeypatch.setitem(sys.modules, "vaderSentiment.vaderSentiment", None)
    simulated._vader.cache_clear()
    try:
        with pytest.raises(ImportError, match="pip install vaderSentiment"):
            load_reward_source("vader")
    finally:
        simulated._vader.cache_clear()


def test_load_reward_source_module_function(monkeypatch):
    module = types.ModuleType("tether_test_reward_module")
    module.shout = lambda prompt, response: float(response.count("!"))
    module.batched = lambda prompts, responses: [1.0] * len(responses)
    monkeypatch.setitem(sys.modules, "tether_test_reward_module", module)
    source = load_reward_source("tether_test_reward_module:shout")
    assert source.name == "shout" and source.score(["p"], ["hey!!"])["reward"].tolist() == [2.0]
    assert load_reward_source("tether_test_reward_module:batched", batched=True).score(["p", "q"], ["a", "b"])["reward"].tolist() == [1.0, 1.0]
    with pytest.raises(ValueError):
        load_reward_source("no-such-thing")
