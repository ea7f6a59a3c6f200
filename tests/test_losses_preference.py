"""The DPO family: a hand-computed value, a gradient check and a preference property per variant.

Shared hand example (one pair, unless a test says otherwise):
    πc = −1, πr = −3, rc = −2, rr = −2  ->  chosen log-ratio 1, rejected log-ratio −1, h = 2.
    Lc = 2, Lr = 4 tokens.
sp(x) = log(1 + e^{−x}) = −log σ(x), written with ``math`` so the expectation does not reuse torch.
"""

import math

import pytest
import torch

from tether.rl.logprobs import log1mexp
from tether.losses.preference import (
    HYPERPARAMETER_USERS,
    PREFERENCE_LOSSES,
    PreferenceLoss,
    kto_reference_point,
    preference_loss,
    spec_of,
)


def sp(x: float) -> float:
    """−log σ(x)."""
    return math.log1p(math.exp(-x))


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def pair(**overrides):
    t = {
        "policy_chosen": torch.tensor([-1.0], dtype=torch.float64),
        "policy_rejected": torch.tensor([-3.0], dtype=torch.float64),
        "ref_chosen": torch.tensor([-2.0], dtype=torch.float64),
        "ref_rejected": torch.tensor([-2.0], dtype=torch.float64),
        "chosen_len": torch.tensor([2.0], dtype=torch.float64),
        "rejected_len": torch.tensor([4.0], dtype=torch.float64),
    }
    t.update(overrides)
    return t


def value(kind, **kwargs) -> float:
    losses, _ = preference_loss(kind, **kwargs)
    return losses.item()


# --------------------------------------------------------------------------- hand values


def test_dpo_by_hand():
    """β = 0.5: βh = 1, loss = −log σ(1) = log(1 + e^{−1}) ≈ 0.3133.
    Metrics: rewards β·ratio = 0.5 and −0.5, margin 1, accuracy 1."""
    losses, metrics = preference_loss("dpo", **pair(), beta=0.5)
    assert abs(losses.item() - sp(1.0)) < 1e-6
    assert metrics["rewards/chosen"].item() == 0.5 and metrics["rewards/rejected"].item() == -0.5
    assert metrics["rewards/margin"].item() == 1.0 and metrics["rewards/accuracy"].item() == 1.0
    assert metrics["logps/chosen"].item() == -1.0 and metrics["logps/rejected"].item() == -3.0
    assert not any(m.requires_grad for m in metrics.values())


def test_cdpo_by_hand():
    """β = 0.5, ε = 0.1: 0.9·(−log σ(1)) + 0.1·(−log σ(−1)) = 0.9·sp(1) + 0.1·sp(−1); ε = 0 is DPO."""
    assert abs(value("cdpo", **pair(), beta=0.5, label_smoothing=0.1) - (0.9 * sp(1.0) + 0.1 * sp(-1.0))) < 1e-6
    assert abs(value("cdpo", **pair(), beta=0.5, label_smoothing=0.0) - sp(1.0)) < 1e-6


def test_robust_dpo_by_hand():
    """β = 0.5, ε = 0.1: (0.9·sp(1) − 0.1·sp(−1)) / (1 − 0.2)."""
    expected = (0.9 * sp(1.0) - 0.1 * sp(-1.0)) / 0.8
    assert abs(value("robust", **pair(), beta=0.5, label_smoothing=0.1) - expected) < 1e-6
    with pytest.raises(ValueError):
        preference_loss("robust", **pair(), beta=0.5, label_smoothing=0.5)


def test_robust_dpo_is_unbiased_under_label_noise():
    """E over labels flipped with prob ε of the robust loss = clean DPO loss:
    (1−ε)·robust(h) + ε·robust(−h) = sp(βh)."""
    eps, beta = 0.2, 0.5
    clean = pair()
    flipped = pair(policy_chosen=clean["policy_rejected"], policy_rejected=clean["policy_chosen"],
                   ref_chosen=clean["ref_rejected"], ref_rejected=clean["ref_chosen"])
    expected_loss = (1 - eps) * value("robust", **clean, beta=beta, label_smoothing=eps) + eps * value("robust", **flipped, beta=beta, label_smoothing=eps)
    assert abs(expected_loss - sp(1.0)) < 1e-6


def test_ipo_by_hand_uses_per_token_means():
    """h̄ = (πc − rc)/Lc − (πr − rr)/Lr = 1/2 − (−1)/4 = 0.75; β = 0.5: 1/(2β) = 1;
    loss = (0.75 − 1)² = 0.0625. (With sums it would be (2 − 1)² = 1.)"""
    assert abs(value("ipo", **pair(), beta=0.5) - 0.0625) < 1e-6


def test_hinge_by_hand():
    """β = 0.25: max(0, 1 − 0.25·2) = 0.5; β = 1: max(0, 1 − 2) = 0."""
    assert abs(value("hinge", **pair(), beta=0.25) - 0.5) < 1e-6
    assert value("hinge", **pair(), beta=1.0) == 0.0


def test_simpo_by_hand():
    """πc/Lc = −2/2 = −1, πr/Lr = −6/3 = −2; β = 2, γ = 1: 2·(−1 + 2) − 1 = 1 -> sp(1).
    gamma_beta_ratio = 0.5 gives the same γ = 0.5·2 = 1. Rewards: β·mean = −2 and −4."""
    t = pair(policy_chosen=torch.tensor([-2.0], dtype=torch.float64), policy_rejected=torch.tensor([-6.0], dtype=torch.float64),
             rejected_len=torch.tensor([3.0], dtype=torch.float64))
    losses, metrics = preference_loss("simpo", **t, beta=2.0, gamma=1.0)
    assert abs(losses.item() - sp(1.0)) < 1e-6
    assert abs(value("simpo", **t, beta=2.0, gamma=123.0, gamma_beta_ratio=0.5) - sp(1.0)) < 1e-6
    assert metrics["rewards/chosen"].item() == -2.0 and metrics["rewards/rejected"].item() == -4.0


def test_orpo_by_hand():
    """p̄c = −2/2 = −1, p̄r = −6/3 = −2. log-odds(p) = p − log(1 − eᵖ), so
    ratio = (−1 − log(1 − e⁻¹)) − (−2 − log(1 − e⁻²)) = 1 + log((1 − e⁻²)/(1 − e⁻¹)) = 1 + log(1 + e⁻¹).
    loss = NLL + λ·sp(ratio) = 1 + 0.1·sp(1 + log(1 + e⁻¹))."""
    t = pair(policy_chosen=torch.tensor([-2.0], dtype=torch.float64), policy_rejected=torch.tensor([-6.0], dtype=torch.float64),
             rejected_len=torch.tensor([3.0], dtype=torch.float64))
    ratio = 1 + math.log1p(math.exp(-1))
    losses, metrics = preference_loss("orpo", **t, beta=0.1)
    assert abs(losses.item() - (1.0 + 0.1 * sp(ratio))) < 1e-6
    assert abs(metrics["orpo/log_odds_ratio"].item() - ratio) < 1e-6
    assert metrics["nll/chosen"].item() == 1.0


def test_log1mexp_is_accurate_at_both_ends():
    """log(1 − eˣ): x = −1e−10 -> log(1e−10) (to first order); x = −50 -> −e⁻⁵⁰; x = −1 -> log(1 − 1/e)."""
    x = torch.tensor([-1e-10, -50.0, -1.0], dtype=torch.float64)
    out = log1mexp(x)
    assert abs(out[0].item() - math.log(1e-10)) < 1e-6
    assert abs(out[1].item() + math.exp(-50)) < 1e-30
    assert abs(out[2].item() - math.log(1 - math.exp(-1))) < 1e-12
    assert torch.isfinite(log1mexp(torch.tensor([-1e-6], dtype=torch.float32))).all()


def test_rpo_by_hand():
    """β = 0.5, α = 2: DPO sp(1) + 2·(−πc/Lc) = sp(1) + 2·(1/2) = sp(1) + 1."""
    assert abs(value("rpo", **pair(), beta=0.5, alpha=2.0) - (sp(1.0) + 1.0)) < 1e-6


def test_kto_by_hand():
    """Example 0 desirable: π = −1, ref = −2, r = 1; example 1 undesirable: π = −3, ref = −2, r = −1.
    β = 0.5, z0 = 0.5, w_d = 1, w_u = 2:
      desirable:   1·(1 − σ(0.5·(1 − 0.5)))    = 1 − σ(0.25)
      undesirable: 2·(1 − σ(0.5·(0.5 − (−1)))) = 2·(1 − σ(0.75))
    A negative KL estimate is clamped to 0; without one, z0 = max(0, mean r) = max(0, 0) = 0."""
    t = {"policy_logps": torch.tensor([-1.0, -3.0], dtype=torch.float64), "ref_logps": torch.tensor([-2.0, -2.0], dtype=torch.float64),
         "labels": torch.tensor([True, False])}
    losses, metrics = preference_loss("kto", **t, beta=0.5, desirable_weight=1.0, undesirable_weight=2.0, kl_estimate=torch.tensor(0.5))
    assert torch.allclose(losses, torch.tensor([1 - sigmoid(0.25), 2 * (1 - sigmoid(0.75))], dtype=torch.float64), atol=1e-6)
    assert metrics["rewards/chosen"].item() == 0.5 and metrics["rewards/rejected"].item() == -0.5
    assert metrics["kto/kl"].item() == 0.5
    at_zero = torch.tensor([1 - sigmoid(0.5), 2 * (1 - sigmoid(0.5))], dtype=torch.float64)
    clamped, _ = preference_loss("kto", **t, beta=0.5, undesirable_weight=2.0, kl_estimate=-1.0)
    batch, _ = preference_loss("kto", **t, beta=0.5, undesirable_weight=2.0)
    assert torch.allclose(clamped, at_zero, atol=1e-6) and torch.allclose(batch, at_zero, atol=1e-6)


def test_kto_reference_point_is_detached_and_clamped():
    policy = torch.tensor([-1.0, -1.0], requires_grad=True)
    z0 = kto_reference_point(policy, torch.tensor([-2.0, -4.0]))
    assert z0.item() == 2.0 and not z0.requires_grad
    assert kto_reference_point(torch.tensor([-3.0]), torch.tensor([-1.0])).item() == 0.0


def test_listwise_by_hand():
    """β = 1, π − ref = [2, 1, 0] -> s = [2, 1, 0]:
    nll = (−2 + log(e² + e + 1)) + (−1 + log(e + 1)) + 0.
    With the third completion masked out (its score 100 must not matter): (−2 + log(e² + e)) = sp(1)."""
    e = math.e
    policy = torch.tensor([[2.0, 1.0, 0.0]], dtype=torch.float64)
    ref = torch.zeros(1, 3, dtype=torch.float64)
    losses, metrics = preference_loss("listwise", policy_logps=policy, ref_logps=ref, beta=1.0)
    assert abs(losses.item() - ((-2 + math.log(e**2 + e + 1)) + (-1 + math.log(e + 1)))) < 1e-6
    assert metrics["rewards/accuracy"].item() == 1.0 and abs(metrics["rewards/margin"].item() - 4 / 3) < 1e-6
    masked = torch.tensor([[2.0, 1.0, 100.0]], dtype=torch.float64)
    m = torch.tensor([[True, True, False]])
    assert abs(value("listwise", policy_logps=masked, ref_logps=ref, beta=1.0, mask=m) - sp(1.0)) < 1e-6


def test_listwise_with_two_completions_is_dpo():
    torch.manual_seed(0)
    t = {k: torch.randn(5, dtype=torch.float64) for k in ("policy_chosen", "policy_rejected", "ref_chosen", "ref_rejected")}
    dpo, _ = preference_loss("dpo", **t, beta=0.3)
    listwise, _ = preference_loss("listwise", policy_logps=torch.stack([t["policy_chosen"], t["policy_rejected"]], 1),
                                  ref_logps=torch.stack([t["ref_chosen"], t["ref_rejected"]], 1), beta=0.3)
    assert torch.allclose(dpo, listwise, atol=1e-12)


# --------------------------------------------------------------------------- gradients and properties

HPARAMS = {"beta": 0.3, "label_smoothing": 0.1, "gamma": 0.5, "alpha": 0.7, "desirable_weight": 1.0, "undesirable_weight": 1.5}


def hparams_of(kind) -> dict:
    """The HPARAMS that ``kind`` takes: the others set away from their defaults would be refused."""
    return {k: v for k, v in HPARAMS.items() if PreferenceLoss(kind) in HYPERPARAMETER_USERS[k]}

PAIRED = [k for k, s in PREFERENCE_LOSSES.items() if s.data == "paired"]


def random_pairs(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    lens_c = torch.randint(2, 8, (n,), generator=g).double()
    lens_r = torch.randint(2, 8, (n,), generator=g).double()
    return {
        "policy_chosen": -lens_c * (0.5 + torch.rand(n, generator=g, dtype=torch.float64)),
        "policy_rejected": -lens_r * (0.5 + torch.rand(n, generator=g, dtype=torch.float64)),
        "ref_chosen": -lens_c * (0.5 + torch.rand(n, generator=g, dtype=torch.float64)),
        "ref_rejected": -lens_r * (0.5 + torch.rand(n, generator=g, dtype=torch.float64)),
        "chosen_len": lens_c,
        "rejected_len": lens_r,
    }


@pytest.mark.parametrize("kind", PAIRED)
def test_paired_gradcheck(kind):
    t = random_pairs()
    names = ["policy_chosen", "policy_rejected", "ref_chosen", "ref_rejected"]

    def f(*logps):
        return preference_loss(kind, **{**t, **dict(zip(names, logps))}, **hparams_of(kind))[0]

    inputs = tuple(t[n].clone().requires_grad_(True) for n in names)
    assert torch.autograd.gradcheck(f, inputs)


@pytest.mark.parametrize("kind", PAIRED)
def test_paired_raising_chosen_logprob_lowers_loss(kind):
    """For every pair, +0.1 on the chosen log-prob lowers the loss and +0.1 on the rejected raises it.
    Chosen and rejected start equal so hinge is active and IPO is below its target margin."""
    t = random_pairs(seed=1)
    t["policy_rejected"], t["ref_rejected"], t["rejected_len"] = t["policy_chosen"], t["ref_chosen"], t["chosen_len"]
    base, _ = preference_loss(kind, **t, **hparams_of(kind))
    up, _ = preference_loss(kind, **{**t, "policy_chosen": t["policy_chosen"] + 0.1}, **hparams_of(kind))
    worse, _ = preference_loss(kind, **{**t, "policy_rejected": t["policy_rejected"] + 0.1}, **hparams_of(kind))
    assert (up < base).all(), (kind, up, base)
    assert (worse > base).all(), (kind, worse, base)


def kto_inputs():
    g = torch.Generator().manual_seed(2)
    return {"policy_logps": -5 * torch.rand(6, generator=g, dtype=torch.float64), "ref_logps": -5 * torch.rand(6, generator=g, dtype=torch.float64),
            "labels": torch.tensor([True, False, True, True, False, False])}


def test_kto_gradcheck():
    t = kto_inputs()
    f = lambda p, r: preference_loss("kto", policy_logps=p, ref_logps=r, labels=t["labels"], kl_estimate=0.3, **hparams_of("kto"))[0]  # noqa: E731
    assert torch.autograd.gradcheck(f, (t["policy_logps"].requires_grad_(), t["ref_logps"].requires_grad_()))


def test_kto_raising_desirable_logprob_lowers_its_loss():
    """+0.1 on every log-prob, z0 fixed: desirable losses fall, undesirable ones rise."""
    t = kto_inputs()
    base, _ = preference_loss("kto", **t, kl_estimate=0.3, **hparams_of("kto"))
    up, _ = preference_loss("kto", **{**t, "policy_logps": t["policy_logps"] + 0.1}, kl_estimate=0.3, **hparams_of("kto"))
    assert (up[t["labels"]] < base[t["labels"]]).all()
    assert (up[~t["labels"]] > base[~t["labels"]]).all()


def test_kto_batch_reference_point_carries_no_gradient():
    """With z0 estimated from the batch, the gradient equals that with z0 passed as a constant."""
    t = kto_inputs()
    z0 = kto_reference_point(t["policy_logps"], t["ref_logps"])
    grads = []
    for kl in (None, z0.item()):
        p = t["policy_logps"].clone().requires_grad_()
        preference_loss("kto", **{**t, "policy_logps": p}, kl_estimate=kl, **hparams_of("kto"))[0].sum().backward()
        grads.append(p.grad)
    assert torch.allclose(grads[0], grads[1])


def test_listwise_gradcheck_with_mask_and_property():
    g = torch.Generator().manual_seed(3)
    policy = -5 * torch.rand(3, 4, generator=g, dtype=torch.float64)
    ref = -5 * torch.rand(3, 4, generator=g, dtype=torch.float64)
    mask = torch.tensor([[True] * 4, [True, True, True, False], [True, True, False, False]])
    f = lambda p, r: preference_loss("listwise", policy_logps=p, ref_logps=r, mask=mask, **hparams_of("listwise"))[0]  # noqa: E731
    assert torch.autograd.gradcheck(f, (policy.clone().requires_grad_(), ref.clone().requires_grad_()))
    base = f(policy, ref)
    raised = policy.clone()
    raised[:, 0] += 0.1
    assert (f(raised, ref) < base).all()


# --------------------------------------------------------------------------- the table


def test_table_covers_every_member_and_specs():
    assert set(PREFERENCE_LOSSES) == set(PreferenceLoss)
    assert not spec_of("simpo").needs_reference and not spec_of("orpo").needs_reference
    assert spec_of("dpo").needs_reference and not spec_of("dpo").needs_lengths
    assert spec_of("kto").data == "unpaired" and spec_of("listwise").data == "ranking"
    assert spec_of(PreferenceLoss.IPO).length_normalized and spec_of("ipo").needs_lengths
    assert spec_of("orpo").needs_chosen_nll and spec_of("rpo").needs_chosen_nll and not spec_of("dpo").needs_chosen_nll


def test_dispatch_ignores_other_variants_arguments_but_rejects_typos_and_missing():
    t = pair()
    defaults = {"label_smoothing": 0.0, "alpha": 1.0, "gamma": 0.5, "desirable_weight": 1.0, "undesirable_weight": 1.0, "kl_estimate": None, "mask": None}
    # lengths, and other variants' hyperparameters left at their defaults, are dropped
    assert abs(value("hinge", **t, beta=0.3, **defaults) - max(0.0, 1 - 0.3 * 2)) < 1e-6
    with pytest.raises(TypeError, match="betta"):
        preference_loss("dpo", **t, betta=0.1)
    with pytest.raises(TypeError):
        preference_loss("dpo", policy_chosen=t["policy_chosen"], policy_rejected=t["policy_rejected"])
    with pytest.raises(ValueError):
        spec_of("not-a-loss")


def test_hyperparameter_users_come_from_the_signatures():
    """Who takes what, read off the table: label smoothing is cdpo's and robust's, alpha rpo's,
    gamma simpo's, the weights kto's; beta every variant's."""
    users = {k: sorted(v.value for v in kinds) for k, kinds in HYPERPARAMETER_USERS.items()}
    assert users["label_smoothing"] == ["cdpo", "robust"]
    assert users["alpha"] == ["rpo"] and users["gamma"] == ["simpo"] and users["desirable_weight"] == ["kto"]
    assert set(HYPERPARAMETER_USERS["beta"]) == set(PreferenceLoss)
    assert "chosen_len" not in HYPERPARAMETER_USERS  # a batch tensor, not a hyperparameter


def _tensors_for(kind: str) -> dict:
    data = PreferenceLoss(kind).data
    if data == "unpaired":
        return {"policy_logps": torch.zeros(2), "ref_logps": torch.zeros(2), "labels": torch.tensor([True, False])}
    if data == "ranking":
        return {"policy_logps": torch.zeros(2, 3), "ref_logps": torch.zeros(2, 3)}
    return pair()


@pytest.mark.parametrize(
    ("kind", "key", "value", "users"),
    [
        ("ipo", "label_smoothing", 0.1, "cdpo, robust"),
        ("dpo", "label_smoothing", 0.1, "cdpo, robust"),
        ("dpo", "alpha", 0.5, "rpo"),
        ("hinge", "gamma", 1.0, "simpo"),
        ("orpo", "gamma_beta_ratio", 0.5, "simpo"),
        ("rpo", "desirable_weight", 2.0, "kto"),
        ("listwise", "kl_estimate", 0.3, "kto"),
        ("kto", "mask", torch.ones(2, 2, dtype=torch.bool), "listwise"),
    ],
)
def test_a_hyperparameter_the_variant_ignores_is_refused_when_set(kind, key, value, users):
    """Each refusal path: another variant's keyword-only argument set away from its default (a
    float, or any value where the default is None) is an error naming the key and its users; the
    same key at its default passes."""
    with pytest.raises(ValueError, match=f"{key}=.* is used only by {users}"):
        preference_loss(kind, **_tensors_for(kind), **{key: value})
    default = next(iter(HYPERPARAMETER_USERS[key].values()))
    preference_loss(kind, **_tensors_for(kind), **{key: default})


def test_enum_members_answer_the_trainers_questions():
    """The members read their row of the table: reference? length-normalised? data layout?"""
    for kind, spec in PREFERENCE_LOSSES.items():
        assert (kind.needs_reference, kind.length_normalized, kind.data) == (spec.needs_reference, spec.length_normalized, spec.data)
    assert not PreferenceLoss.SIMPO.needs_reference and PreferenceLoss.SIMPO.length_normalized
    assert PreferenceLoss.KTO.data == "unpaired" and PreferenceLoss.LISTWISE.data == "ranking" and PreferenceLoss("ipo").data == "paired"
