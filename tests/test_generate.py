"""`tether generate` over the rollout engine: sampling options, several prompts and samples,
seeded sampling, JSONL output, and greedy decoding equal to transformers' greedy."""

import json
import math

import pytest
import torch

from tether.cli import main
from tether.rollout.engine import Sampler, SamplingParams


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from tether.models.tiny import tiny_model_and_tokenizer

    torch.set_num_threads(1)
    model, tokenizer = tiny_model_and_tokenizer(seed=0)
    path = tmp_path_factory.mktemp("tiny")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_greedy_sampler_takes_the_argmax_and_reports_its_tempered_logprob():
    """logits [1, 3, 2], temperature 2: argmax 1, log-prob 3/2 − log(e^0.5 + e^1.5 + e^1).
    With token 1 banned the argmax is 2 and the normaliser leaves token 1 out: 1 − log(e^0.5 + e^1)."""
    sample = Sampler(SamplingParams(temperature=2.0, greedy=True))
    tokens, logprobs = sample(torch.tensor([[1.0, 3.0, 2.0]]))
    assert tokens.tolist() == [1]
    assert logprobs.item() == pytest.approx(1.5 - math.log(math.exp(0.5) + math.exp(1.5) + math.exp(1.0)), abs=1e-6)
    tokens, logprobs = sample(torch.tensor([[1.0, 3.0, 2.0]]), banned=torch.tensor([1]))
    assert tokens.tolist() == [2]
    assert logprobs.item() == pytest.approx(1.0 - math.log(math.exp(0.5) + math.exp(1.0)), abs=1e-6)
    with pytest.raises(ValueError, match="do nothing with greedy"):
        SamplingParams(greedy=True, top_p=0.9)


def test_greedy_replies_equal_transformers_greedy(tiny_dir):
    """The engine's greedy path (temperature 0 in the CLI) against the plain transformers
    ``model.generate(do_sample=False)`` that `tether generate` ran before."""
    from tether.models import load_model
    from tether.rollout.replies import sample_replies
    from tether.trainers.sft import sample_completions

    model, tokenizer = load_model(tiny_dir)
    prompts = ["How do I sort a list?", "hi", "Tell me a long story about a cat and a dog."]
    plain = sample_completions(model, tokenizer, prompts, max_new_tokens=12)
    engine = [r.text for r in sample_replies(model, tokenizer, prompts, SamplingParams(max_new_tokens=12, greedy=True), batch_size=2)]
    assert engine == plain


def test_cli_prints_and_writes_every_sample_of_every_prompt(tiny_dir, tmp_path, capsys):
    prompts_file = tmp_path / "prompts.jsonl"
    prompts_file.write_text(json.dumps({"prompt": "from the file"}) + "\n")
    out = tmp_path / "out.jsonl"
    argv = ["generate", "--model", str(tiny_dir), "--prompt", "first", "--prompt", "second", "--prompts", str(prompts_file)]
    argv += ["--temperature", "1.2", "--top-p", "0.95", "--top-k", "50", "--samples", "3", "--max-new-tokens", "6", "--seed", "7", "--batch-size", "4", "--output", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.count("### ") == 9 and "[sample 3/3]" in printed and f"wrote 9 replies to {out}" in printed
    rows = _rows(out)
    assert [(r["prompt"], r["sample"]) for r in rows] == [(p, k) for p in ("first", "second", "from the file") for k in range(3)]
    assert all(r["seed"] == 7 and r["temperature"] == 1.2 and 1 <= r["new_tokens"] <= 6 for r in rows)


def test_cli_sampling_is_seeded(tiny_dir, tmp_path, capsys):
    def run(seed, name):
        out = tmp_path / name
        argv = ["generate", "--model", str(tiny_dir), "--prompt", "a", "--prompt", "b", "--temperature", "1.0", "-n", "4", "--max-new-tokens", "8", "--seed", str(seed), "--output", str(out)]
        assert main(argv) == 0
        return [r["completion"] for r in _rows(out)]

    first, again, other = run(3, "a.jsonl"), run(3, "b.jsonl"), run(4, "c.jsonl")
    assert first == again
    assert first != other
    assert len(set(first)) > 1  # samples of one prompt differ from each other
    capsys.readouterr()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--samples", "2"], "identical replies"),
        (["--top-p", "0.9"], "do nothing with greedy"),
        (["--temperature", "-1"], "temperature must be positive"),
    ],
)
def test_cli_refuses_settings_that_do_nothing_before_loading(extra, message, capsys):
    argv = ["generate", "--model", "/no/such/model", "--prompt", "x"] + extra  # the model is never loaded
    assert main(argv) == 2
    assert message in capsys.readouterr().err
