"""`tether sample`: rows, per-completion seeds, resume after a kill, refusal of a foreign file."""

import json

import pytest
import torch

from tether.feedback.sample import SampleSettings, model_fingerprint, read_sample_rows, sample_file
from tether.models import tiny_model_and_tokenizer
from tether.rollout.engine import SamplingParams, encode_prompts, generate

PROMPTS = [[{"role": "user", "content": f"Say something about {w}."}] for w in ["rain", "tea", "maps", "owls", "salt"]]
SETTINGS = SampleSettings(temperature=1.0, top_p=0.95, top_k=50, max_new_tokens=6, seed=7)


class Killed(Exception):
    pass


def _lines(path):
    return path.read_text().splitlines()


def test_rows_hold_prompt_completions_settings_and_fingerprint(tmp_path):
    model, tok = tiny_model_and_tokenizer()
    out = tmp_path / "s.jsonl"
    report = sample_file(model, tok, PROMPTS, out, k=3, settings=SETTINGS, batch_size=2, model_name="tiny", progress=False)
    rows = [json.loads(line) for line in _lines(out)]
    assert report.written == 5 and report.resumed == 0
    assert [r["prompt"] for r in rows] == [p[0]["content"] for p in PROMPTS]
    assert all(len(r["completions"]) == 3 for r in rows)
    assert rows[0]["sampling"] == {"temperature": 1.0, "top_p": 0.95, "top_k": 50, "max_new_tokens": 6, "seed": 7}
    assert {r["model_fingerprint"] for r in rows} == {model_fingerprint(model)} and rows[0]["model"] == "tiny"
    # the completions of one prompt come from different streams, so they are not all one text
    assert any(len(set(r["completions"])) > 1 for r in rows)


def test_fingerprint_changes_with_the_weights():
    model, _ = tiny_model_and_tokenizer()
    before = model_fingerprint(model)
    with torch.no_grad():
        next(model.parameters()).add_(1e-3)
    assert model_fingerprint(model) != before


def test_batch_size_does_not_change_the_completions(tmp_path):
    """Each completion has its own generator, so batch 1 and batch 3 draw the same numbers per row."""
    model, tok = tiny_model_and_tokenizer()
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    sample_file(model, tok, PROMPTS, a, k=2, settings=SETTINGS, batch_size=1, progress=False)
    sample_file(model, tok, PROMPTS, b, k=2, settings=SETTINGS, batch_size=3, progress=False)
    assert _lines(a) == _lines(b)


def test_a_time_budget_starts_no_batch_that_would_end_past_it(tmp_path):
    """The first batch always runs; with max_seconds=0 a second one would end past the budget, so 2
    of the 5 prompts are written, the same rows as the unbounded file's first two."""
    model, tok = tiny_model_and_tokenizer()
    whole, cut = tmp_path / "whole.jsonl", tmp_path / "cut.jsonl"
    sample_file(model, tok, PROMPTS, whole, k=2, settings=SETTINGS, batch_size=2, progress=False)
    report = sample_file(model, tok, PROMPTS, cut, k=2, settings=SETTINGS, batch_size=2, progress=False, max_seconds=0.0)
    assert (report.prompts, report.written) == (5, 2)
    assert _lines(cut) == _lines(whole)[:2]


def test_a_killed_run_resumes_to_the_uninterrupted_file(tmp_path):
    model, tok = tiny_model_and_tokenizer()
    whole, resumed = tmp_path / "whole.jsonl", tmp_path / "resumed.jsonl"
    sample_file(model, tok, PROMPTS, whole, k=2, settings=SETTINGS, batch_size=2, progress=False)

    def kill_after_first_batch(rows_written):
        raise Killed

    with pytest.raises(Killed):
        sample_file(model, tok, PROMPTS, resumed, k=2, settings=SETTINGS, batch_size=2, progress=False, after_batch=kill_after_first_batch)
    assert len(_lines(resumed)) == 2
    # a torn half line, as a kill in the middle of a write leaves it
    with open(resumed, "a") as f:
        f.write(_lines(whole)[2][:20])
    report = sample_file(model, tok, PROMPTS, resumed, k=2, settings=SETTINGS, batch_size=2, progress=False)
    assert (report.resumed, report.written) == (2, 3)
    assert _lines(resumed) == _lines(whole)  # no duplicate, no missing row, same completions
    # a finished file: a rerun writes nothing
    again = sample_file(model, tok, PROMPTS, resumed, k=2, settings=SETTINGS, batch_size=2, progress=False)
    assert again.written == 0 and _lines(resumed) == _lines(whole)


def test_resume_refuses_a_file_from_other_settings_or_prompts(tmp_path):
    model, tok = tiny_model_and_tokenizer()
    out = tmp_path / "s.jsonl"
    sample_file(model, tok, PROMPTS[:2], out, k=2, settings=SETTINGS, batch_size=2, progress=False)
    with pytest.raises(ValueError, match="sampling"):
        sample_file(model, tok, PROMPTS, out, k=2, settings=SampleSettings(seed=8, max_new_tokens=6), progress=False)
    with pytest.raises(ValueError, match="prompt differs"):
        sample_file(model, tok, PROMPTS[1:], out, k=2, settings=SETTINGS, progress=False)
    with pytest.raises(ValueError, match="completions"):
        sample_file(model, tok, PROMPTS, out, k=3, settings=SETTINGS, progress=False)


def test_a_bad_line_inside_the_file_is_an_error_naming_it(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text('{"prompt": "a", "completions": ["x"]}\nnot json\n{"prompt": "b", "completions": ["y"]}\n')
    with pytest.raises(ValueError, match=r"s.jsonl:2"):
        read_sample_rows(path)


def test_engine_rows_with_their_own_generators_ignore_their_neighbours():
    """Row 0 samples the same tokens alone as beside another row, given its own generator."""
    model, tok = tiny_model_and_tokenizer()
    params = SamplingParams(max_new_tokens=8)
    ids = encode_prompts(tok, ["hello there", "a much longer prompt than the first one"])
    alone = generate(model, tok, ids[:1], params, [torch.Generator().manual_seed(3)])
    pair = generate(model, tok, ids, params, [torch.Generator().manual_seed(3), torch.Generator().manual_seed(4)])
    assert alone.texts[0] == pair.texts[0]
    with pytest.raises(ValueError, match="one per row"):
        generate(model, tok, ids, params, [torch.Generator()])


def test_cli_sample_writes_and_resumes(tmp_path, capsys):
    from tether.cli import main

    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p[0]["content"]}) + "\n" for p in PROMPTS))
    out = tmp_path / "s.jsonl"
    args = ["sample", "--model", "tiny", "--prompts", str(prompts), "--output", str(out), "--k", "2", "--max-new-tokens", "4", "--batch-size", "2"]
    torch.manual_seed(0)  # "tiny" takes its weights from the global seed
    assert main(args + ["--limit", "3"]) == 0
    assert len(_lines(out)) == 3
    torch.manual_seed(0)
    assert main(args) == 0
    assert len(_lines(out)) == 5
    assert "3 already there, 2 written now" in capsys.readouterr().out


def test_a_sample_file_is_not_read_as_a_ranking_but_gives_its_prompts(tmp_path):
    from tether.data import DataError, load_records

    model, tok = tiny_model_and_tokenizer()
    out = tmp_path / "s.jsonl"
    sample_file(model, tok, PROMPTS[:2], out, k=2, settings=SETTINGS, progress=False)
    with pytest.raises(DataError, match="unranked candidates"):
        load_records(out)
    assert len(load_records(out, kind="prompt").records) == 2
