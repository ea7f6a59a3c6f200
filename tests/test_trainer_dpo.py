"""The DPO-family trainer on a tiny random model.

Optimised against plain (packed vs padded batches, accumulated vs full batch), the metrics it
reports, that a run learns and resumes exactly, and the three reference policies (frozen copy,
LoRA adapter off, cached on disk).
"""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from tether.config import DPOConfig, load_config
from tether.data.batches import collate
from tether.data.layouts import Layout, collate_layout
from tether.losses.preference import PREFERENCE_LOSSES, PreferenceLoss, preference_loss
from tether.trainers.dpo import (
    BUNDLED_DATA,
    PreferenceObjective,
    add_mismatched_completions,
    loss_kwargs,
    resolve_data_path,
    run_dpo,
)
from tether.trainers.offline import Example
from tether.trainers.reference import ReferencePolicy, sequence_logps

WORDS = ["apple", "river", "stone", "cloud", "maple", "ember", "frost", "grain", "harbor", "island", "jade", "kettle"]


@pytest.fixture
def pref_file(tmp_path):
    """A learnable preference set: the chosen reply spells the word, the rejected one repeats 'no'."""
    path = tmp_path / "pairs.jsonl"
    with open(path, "w") as f:
        for w in WORDS:
            f.write(json.dumps({"prompt": f"Spell {w}", "chosen": " ".join(w.upper()), "rejected": "no no no"}) + "\n")
    return path


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    """One reference cache for the per-variant runs: the paired variants share one pass."""
    return tmp_path_factory.mktemp("shared-cache")


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("TETHER_CACHE", str(d))
    return d


def _overrides(out, data=None, steps=12, **extra):
    base = {
        "model.name_or_path": "tiny",
        "data.eval_fraction": "0",
        "train.output_dir": str(out),
        "train.max_steps": str(steps),
        "train.batch_size": "4",
        "train.micro_batch_size": "2",
        "train.lr": "3e-3",
        "train.warmup_ratio": "0",
        "train.progress": "false",
        "train.threads": "1",
        "train.sample_prompts": "[]",
        "dpo.beta": "0.5",
    }
    if data is not None:
        base["data.path"] = str(data)
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def _records(out, split="train"):
    return [r for r in map(json.loads, open(Path(out) / "metrics.jsonl")) if r["split"] == split]


def _tiny(seed=0):
    from tether.models import tiny_model_and_tokenizer

    torch.manual_seed(seed)
    return tiny_model_and_tokenizer()


def _random_examples(n, k, seed=0, vocab=200, label=False):
    """n examples of k random sequences of different lengths and prompt lengths. In even-numbered
    examples the k sequences share their prompt (as real pairs do), in odd ones they do not."""
    g = torch.Generator().manual_seed(seed)
    examples = []
    for i in range(n):
        seqs = []
        for _ in range(k):
            length = int(torch.randint(6, 20, (1,), generator=g))
            plen = int(torch.randint(1, length - 2, (1,), generator=g))
            seqs.append((torch.randint(3, vocab, (length,), generator=g).tolist(), plen))
        if i % 2 == 0:
            prompt = seqs[0][0][: seqs[0][1]]
            seqs = [(prompt + ids[plen:], len(prompt)) for ids, plen in seqs]
        examples.append(Example(seqs, {"label": bool(i % 2)} if label else {}))
    return examples


def _with_cached_reference(examples, seed=1):
    """Fixed 'reference' log-probs, so the loss depends on the policy alone."""
    g = torch.Generator().manual_seed(seed)
    for e in examples:
        e.extra["ref_logps"] = (-20 * torch.rand(len(e.sequences), generator=g)).tolist()
    return examples


def _objective(kind, pad_id, layout, reference=None):
    # Label smoothing only where it means something: any other variant refuses it.
    cfg = load_config(DPOConfig, None, ["dpo.label_smoothing=0.1"] if kind in ("cdpo", "robust") else []).dpo
    return PreferenceObjective(kind, loss_kwargs(cfg), reference, pad_id, layout, row_tokens=64, chunk_size=16)


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


# --------------------------------------------------------------------------- optimised vs plain


def test_padded_packed_and_shared_prompt_batches_give_same_logps_losses_and_gradients():
    """Per-sequence log-probs, per-example DPO losses and every parameter gradient agree between
    one-sequence-per-row padding, packing several sequences per row, and running each pair's
    shared prompt once (float32 tolerance)."""
    model, tok = _tiny()
    examples = _with_cached_reference(_random_examples(5, 2))
    ref = torch.tensor([e.extra["ref_logps"] for e in examples])  # [5, 2]
    out = {}
    for layout in Layout:
        batch = collate_layout(layout, [e.sequences for e in examples], tok.pad_token_id, row_tokens=64)
        if layout is Layout.PACKED:
            assert batch.input_ids.shape[0] < 10 and batch.attention_mask is None  # really packed
        if layout is Layout.SHARED_PROMPT:  # 3 of the 5 pairs share their prompt: fewer tokens than packing
            real_tokens = int((batch.input_ids != tok.pad_token_id).sum())  # the random ids never equal the pad id
            assert real_tokens < sum(len(ids) for e in examples for ids, _ in e.sequences)
        model.zero_grad()
        logps = sequence_logps(model, batch, chunk_size=16).view(5, 2)  # [N, 2]
        losses, _ = preference_loss("dpo", policy_chosen=logps[:, 0], policy_rejected=logps[:, 1], ref_chosen=ref[:, 0], ref_rejected=ref[:, 1], beta=0.5)
        losses.sum().backward()
        out[layout] = (logps.detach(), losses.detach(), _grads(model))
    plain = out[Layout.PADDED]
    assert len(plain[2]) > 0
    for layout in (Layout.PACKED, Layout.SHARED_PROMPT):
        logps, losses, grads = out[layout]
        torch.testing.assert_close(logps, plain[0], rtol=1e-5, atol=1e-4, msg=str(layout))
        torch.testing.assert_close(losses, plain[1], rtol=1e-5, atol=1e-5, msg=str(layout))
        assert grads.keys() == plain[2].keys()
        for name, g in plain[2].items():
            torch.testing.assert_close(grads[name], g, rtol=1e-4, atol=1e-5, msg=f"{layout} {name}")


@pytest.mark.parametrize("kind", ["dpo", "ipo", "simpo", "orpo", "rpo", "listwise"])
def test_objective_packed_equals_padded_and_accumulation_equals_full_batch(kind):
    """The objective's summed loss and gradient: packed == shared prompt == padded; and the loop's accumulation
    Σ_mb (loss_sum(mb) / N) over micro-batches == loss_sum(all) / N for one full batch."""
    model, tok = _tiny()
    k = 3 if PreferenceLoss(kind).data == "ranking" else 2
    examples = _with_cached_reference(_random_examples(6, k, seed=4))
    reference = ReferencePolicy("cached", model, 16) if PreferenceLoss(kind).needs_reference else None
    results = {}
    runs = (("full", Layout.PADDED, 6), ("packed", Layout.PACKED, 6), ("shared", Layout.SHARED_PROMPT, 6), ("accumulated", Layout.PADDED, 2))
    for name, layout, micro in runs:
        obj = _objective(kind, tok.pad_token_id, layout, reference)
        model.zero_grad()
        total = 0.0
        metric_sums = {}
        for start in range(0, 6, micro):
            mb = examples[start : start + micro]
            loss_sum, metrics = obj.loss(model, mb)
            (loss_sum / obj.units(examples)).backward()
            total += float(loss_sum.detach()) / 6
            for m, v in metrics.items():
                metric_sums[m] = metric_sums.get(m, 0.0) + float(v) / 6
        results[name] = (total, metric_sums, _grads(model))
    full_loss, full_metrics, full_grads = results["full"]
    assert math.isfinite(full_loss)
    for name in ("packed", "shared", "accumulated"):
        loss, metrics, grads = results[name]
        assert abs(loss - full_loss) < 1e-5, (name, loss, full_loss)
        for m in ("rewards/chosen", "rewards/rejected", "logps/chosen"):
            assert abs(metrics[m] - full_metrics[m]) < 1e-3 * max(1.0, abs(full_metrics[m])), (name, m)
        for p, g in full_grads.items():
            torch.testing.assert_close(grads[p], g, rtol=1e-4, atol=1e-5, msg=f"{name} {p}")


# --------------------------------------------------------------------------- metrics and KTO's reference point


def test_metrics_practitioners_watch():
    """Implicit rewards, margin, accuracy, log-probs and a KL estimate; the KL is the per-token k1
    log-ratio: with policy = reference it is exactly 0, with ref = policy − L·δ it is δ."""
    model, tok = _tiny()
    examples = _random_examples(4, 2, seed=5)
    batch = collate([e.sequences for e in examples], tok.pad_token_id)
    with torch.no_grad():
        logps = sequence_logps(model, batch, 16).tolist()
    lengths = batch.loss_tokens_per_sequence().tolist()
    for delta in (0.0, 0.25):
        for i, e in enumerate(examples):
            e.extra["ref_logps"] = [logps[2 * i + j] - delta * lengths[2 * i + j] for j in range(2)]
        obj = _objective("dpo", tok.pad_token_id, Layout.PADDED, ReferencePolicy("cached", model, 16))
        _, sums = obj.loss(model, examples)
        means = {m: float(v) / 4 for m, v in sums.items()}
        for m in ("rewards/chosen", "rewards/rejected", "rewards/margin", "rewards/accuracy", "logps/chosen", "logps/rejected", "kl"):
            assert m in means, m
        assert abs(means["kl"] - delta) < 1e-4, means["kl"]
    assert abs(means["rewards/margin"] - (means["rewards/chosen"] - means["rewards/rejected"])) < 1e-5


def test_kto_mismatched_completions_and_reference_point():
    """Each unpaired example gets its own prompt with another example's completion (a fixed,
    seeded derangement); the trainer's z0 is max(0, mean(π − r)) over those mismatched slots."""
    examples = _random_examples(5, 1, seed=6, label=True)
    originals = [e.sequences[0] for e in examples]
    add_mismatched_completions(examples, seed=0, max_length=1000)
    donors = []
    for e, (ids, plen) in zip(examples, originals):
        assert len(e.sequences) == 2 and e.sequences[0] == (ids, plen)
        spliced, splen = e.sequences[1]
        assert splen == plen and spliced[:plen] == ids[:plen]
        donor = [j for j, (oids, op) in enumerate(originals) if oids[op:] == spliced[plen:]]
        assert donor and originals[donor[0]] != (ids, plen)
        donors.append(donor[0])
    assert sorted(donors) == list(range(5))  # a permutation: every completion is used once

    model, tok = _tiny()
    _with_cached_reference(examples)
    obj = _objective("kto", tok.pad_token_id, Layout.SHARED_PROMPT, ReferencePolicy("cached", model, 16))
    _, sums = obj.loss(model, examples)
    batch = collate([e.sequences for e in examples], tok.pad_token_id)
    with torch.no_grad():
        logps = sequence_logps(model, batch, 16).view(5, 2)
    ref = torch.tensor([e.extra["ref_logps"] for e in examples])
    expected = (logps[:, 1] - ref[:, 1]).mean().clamp(min=0)
    assert abs(float(sums["kto/kl"]) / 5 - float(expected)) < 1e-4


def test_data_default_follows_the_loss():
    assert load_config(DPOConfig).data.path == "auto"
    assert resolve_data_path("auto", PreferenceLoss.KTO.data) == "bundled:unpaired"
    assert resolve_data_path("auto", PreferenceLoss.LISTWISE.data) == "bundled:rankings"
    assert resolve_data_path("auto", PreferenceLoss.IPO.data) == "bundled:preferences"
    assert resolve_data_path("my.jsonl", "unpaired") == "my.jsonl"
    assert set(BUNDLED_DATA) == {s.data for s in PREFERENCE_LOSSES.values()}


# --------------------------------------------------------------------------- whole runs


@pytest.mark.parametrize("kind", [k.value for k in PreferenceLoss])
def test_every_variant_trains_from_bundled_data_and_saves_a_transformers_model(kind, tmp_path, shared_cache, monkeypatch):
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("TETHER_CACHE", str(shared_cache))

    out = tmp_path / kind
    smoothing = ["dpo.label_smoothing=0.1"] if kind in ("cdpo", "robust") else []  # the only variants that use it
    result = run_dpo(load_config(DPOConfig, None, [*_overrides(out, steps=2), "dpo.loss=" + kind, *smoothing, "data.eval_fraction=0.05"]))
    assert result.steps == 2 and math.isfinite(result.train_metrics["loss"]) and result.eval_metrics
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    assert torch.isfinite(model(torch.tensor([[1, 2, 3]])).logits).all()


def test_default_settings_pass_every_variant_and_a_foreign_one_is_refused_before_loading(tmp_path, monkeypatch, capsys):
    """The config's defaults equal the loss functions' (no variant trips the check); a setting the
    chosen loss ignores stops `tether dpo` with the config key and the losses that use it, before
    any model is loaded."""
    import tether.trainers.common as common
    from tether.cli import main
    from tether.trainers.dpo import check_loss_settings

    for kind in PreferenceLoss:
        check_loss_settings(load_config(DPOConfig, None, [f"dpo.loss={kind.value}"]).dpo)

    def no_load(*a, **k):
        raise AssertionError("a model was loaded before the settings were checked")

    monkeypatch.setattr(common, "load_trainable_model", no_load)
    assert main(["dpo", "--loss", "ipo", "dpo.label_smoothing=0.1", f"train.output_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "dpo.label_smoothing=0.1 does nothing with dpo.loss=ipo; it is used by cdpo, robust" in err
    assert main(["dpo", "dpo.rpo_alpha=0.5", f"train.output_dir={tmp_path}"]) == 2
    assert "dpo.rpo_alpha=0.5 does nothing with dpo.loss=dpo; it is used by rpo" in capsys.readouterr().err


def test_dpo_learns_the_toy_preferences(pref_file, tmp_path, cache_dir):
    """Step 1 starts at the reference: h = 0, loss = log 2, rewards 0, KL 0. Training lowers the
    loss and makes the chosen reply the preferred one on every pair."""
    out = tmp_path / "run"
    run_dpo(load_config(DPOConfig, None, _overrides(out, pref_file, steps=15)))
    train = _records(out)
    assert abs(train[0]["loss"] - math.log(2)) < 1e-5 and abs(train[0]["kl"]) < 1e-5
    assert train[-1]["loss"] < 0.5 * train[0]["loss"]
    assert train[-1]["rewards/accuracy"] == 1.0 and train[-1]["rewards/margin"] > 0


def test_resume_is_exact(pref_file, tmp_path, cache_dir):
    """Six steps straight == four steps, stop, resume from the step-4 checkpoint for two more."""
    from safetensors.torch import load_file

    straight = tmp_path / "straight"
    args = _overrides(straight, pref_file, steps=6, **{"train.save_every": "2", "train.keep_checkpoints": "3"})
    run_dpo(load_config(DPOConfig, None, args))
    resumed = tmp_path / "resumed"
    shutil.copytree(straight, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step-0000006")
    shutil.rmtree(resumed / "model")
    run_dpo(load_config(DPOConfig, None, [*_overrides(resumed, pref_file, steps=6, **{"train.save_every": "2"}), "train.resume=true"]))
    a = load_file(str(straight / "model" / "model.safetensors"))
    b = load_file(str(resumed / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)
    assert _records(resumed)[-1]["loss"] == pytest.approx(_records(straight)[-1]["loss"], abs=1e-6)


def test_lora_with_adapter_reference(pref_file, tmp_path, cache_dir):
    """With LoRA the reference is the model with its adapters off: no copy, nothing cached.
    New adapters start as a no-op, so step 1 sits at the reference (loss log 2, KL 0)."""
    out = tmp_path / "lora"
    run_dpo(load_config(DPOConfig, None, [*_overrides(out, pref_file, steps=10, **{"train.lr": "1e-2"}), "lora.enabled=true", "lora.r=4"]))
    train = _records(out)
    assert abs(train[0]["loss"] - math.log(2)) < 1e-5 and abs(train[0]["kl"]) < 1e-5
    assert train[-1]["loss"] < train[0]["loss"] and train[-1]["kl"] != 0
    assert not cache_dir.exists() or not any(cache_dir.rglob("*.pt"))


def test_adapter_reference_equals_base_model():
    from tether.models import apply_lora

    model, tok = _tiny()
    examples = _random_examples(3, 2, seed=7)
    batch = collate([e.sequences for e in examples], tok.pad_token_id)
    with torch.no_grad():
        base = sequence_logps(model, batch, 16)
    lora = apply_lora(model, r=4, alpha=8, dropout=0.0, target_modules="all-linear")
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.add_(0.1)  # a trained adapter: the policy now differs from the base
        policy = sequence_logps(lora, batch, 16)
    ref = ReferencePolicy("adapter", lora, 16).logps(lora, batch, examples)
    torch.testing.assert_close(ref, base, rtol=1e-6, atol=1e-5)
    assert (policy - base).abs().max() > 1e-3


def _cached_entries(cache_dir) -> dict:
    entries = {}
    for shard in cache_dir.rglob("shard-*.pt"):
        data = torch.load(shard, weights_only=True)
        entries.update(zip(data["keys"], data["values"]))
    return entries


def test_cached_reference_is_lazy_persistent_and_equals_a_frozen_copy(pref_file, tmp_path, cache_dir, monkeypatch, capsys):
    """Run 1 (one step of 4 pairs from 12): the cache gets exactly the 4 examples that step used.
    Run 2 (same model and data, three steps: 12 pairs): reuses those 4 and computes only the other
    8. Run 3 (the same three steps): computes nothing. Every cached value equals what a frozen
    copy of the initial model gives (the eager pass of before computed the same numbers)."""
    import tether.trainers.reference as reference
    from tether.trainers.common import StepPlan, load_trainable_model
    from tether.trainers.prepare import prepare_data

    computed = []
    real = reference.compute_reference_logps

    def counting(model, examples, *a, **k):
        computed.extend(reference.example_key(e) for e in examples)
        return real(model, examples, *a, **k)

    monkeypatch.setattr(reference, "compute_reference_logps", counting)
    cfg = load_config(DPOConfig, None, _overrides(tmp_path / "c", pref_file))
    model, tok = load_trainable_model(cfg.model, cfg.lora, cfg.train.seed)
    data = prepare_data(tok, cfg.data.__class__(**{**cfg.data.__dict__, "path": str(pref_file)}), "preference", 0)
    step_one = {reference.example_key(data.train[i]) for i in StepPlan(len(data.train), 4, 1.0, 1, cfg.train.seed).indices(0)}

    run_dpo(load_config(DPOConfig, None, _overrides(tmp_path / "a", pref_file, steps=1)))
    assert set(computed) == step_one and len(computed) == 4
    assert set(_cached_entries(cache_dir)) == step_one
    assert "this run uses 4 examples, 0 cached, computing 4" in capsys.readouterr().out

    computed.clear()
    run_dpo(load_config(DPOConfig, None, _overrides(tmp_path / "b", pref_file, steps=3)))
    assert len(computed) == 8 and not set(computed) & step_one
    assert "this run uses 12 examples, 4 cached, computing 8" in capsys.readouterr().out

    computed.clear()
    run_dpo(load_config(DPOConfig, None, _overrides(tmp_path / "b2", pref_file, steps=3)))
    assert computed == []
    assert "this run uses 12 examples, 12 cached, computing 0" in capsys.readouterr().out

    # The cached numbers are the reference's: a frozen copy of the initial model gives the same.
    entries = _cached_entries(cache_dir)
    batch = collate([e.sequences for e in data.train], tok.pad_token_id)
    copy = ReferencePolicy("copy", model, 16).logps(model, batch, data.train)
    cached = torch.tensor([v for e in data.train for v in entries[reference.example_key(e)]])
    torch.testing.assert_close(cached, copy, rtol=1e-5, atol=1e-4)


def test_reference_cache_writes_shards_atomically_and_merges_them(tmp_path, monkeypatch):
    """Values are flushed every ``flush_every`` examples as they are made (each shard a complete
    file), and past MAX_SHARDS files opening the cache merges them into one, losing nothing."""
    import tether.trainers.reference as reference

    monkeypatch.setenv("TETHER_CACHE", str(tmp_path))
    model, tok = _tiny()
    examples = _random_examples(7, 2, seed=9)
    cache = reference.CachedReference(tok.pad_token_id, Layout.PADDED, 64, 16, micro_batch_size=1, progress=False, flush_every=2)
    cache.prepare(model, examples)
    shards = sorted(cache.directory.glob("shard-*.pt"))
    assert len(shards) == 4 and not list(cache.directory.glob("*.tmp*"))  # 2 + 2 + 2 + 1
    monkeypatch.setattr(reference.CachedReference, "MAX_SHARDS", 3)
    again = reference.CachedReference(tok.pad_token_id, Layout.PADDED, 64, 16, 1, progress=False)
    again.open(model)
    assert len(list(again.directory.glob("shard-*.pt"))) == 1 and len(again.values) == 7
    fresh = [reference.Example(list(e.sequences)) for e in examples]
    again.prepare(model, fresh)
    assert again.computed == 0 and [e.extra["ref_logps"] for e in fresh] == [e.extra["ref_logps"] for e in examples]
