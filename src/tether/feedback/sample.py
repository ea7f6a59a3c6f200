"""`tether sample`: K completions per prompt from a model, the candidates that feedback compares.

One JSONL row per prompt::

    {"prompt": ..., "completions": [...K texts...],
     "sampling": {"temperature", "top_p", "top_k", "max_new_tokens", "seed"},
     "model": "default", "model_fingerprint": "<hash of the weights>"}

Sampling runs through the rollout engine (``tether.rollout.engine.generate``), a batch of prompts
with each repeated K times per call. Every completion has its own random stream, seeded from
(seed, prompt index, completion index), so what prompt i receives does not depend on which
other prompts share its batch. That is what makes resuming exact: rows are appended and flushed
(and fsynced) batch by batch; a rerun on the same output reads what is there, checks that it was
written by the same model and settings for the same prompts, drops a torn last line, and samples
only the prompts not yet written, which come out as an uninterrupted run would have written them.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class SampleSettings:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 96
    seed: int = 0


@dataclass
class SampleReport:
    output: str
    prompts: int  # prompts in the input
    resumed: int  # rows already in the file when this run started
    written: int  # rows this run wrote
    seconds: float


def completion_seed(seed: int, prompt_index: int, completion_index: int) -> int:
    """The seed of one completion's random stream: a hash, so nearby seeds give unrelated streams."""
    digest = hashlib.sha256(f"tether-sample/{seed}/{prompt_index}/{completion_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def model_fingerprint(model: torch.nn.Module) -> str:
    """Hash of the weights, the same hash that keys the cached reference log-probabilities."""
    from tether.trainers.reference import model_fingerprint as weights_fingerprint

    return weights_fingerprint(model)


def prompt_value(messages: list[dict]):
    """How a prompt is written to the file: the text of a single user turn, else the whole conversation."""
    if len(messages) == 1 and messages[0]["role"] == "user":
        return messages[0]["content"]
    return [dict(m) for m in messages]


def prompt_messages(value) -> list[dict]:
    """The inverse of ``prompt_value``: a written prompt as chat messages."""
    return [{"role": "user", "content": value}] if isinstance(value, str) else [dict(m) for m in value]


def read_sample_rows(path: str | os.PathLike, *, repair: bool = False) -> list[dict]:
    """The rows of a sample file. A last line cut short by a killed writer is dropped (with
    ``repair=True`` also removed from the file, so appending continues cleanly), with a warning;
    a bad line anywhere else is an error naming the file and line."""
    path = Path(path)
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        last = number == len(lines)  # no newline after it: possibly torn
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or "prompt" not in row or not isinstance(row.get("completions"), list):
                raise ValueError("expected an object with 'prompt' and a list of 'completions'")
        except ValueError as e:
            if not last:
                raise ValueError(f"{path}:{number}: not a sample row ({e})") from None
            print(f"warning: {path}:{number}: dropping a torn last line ({len(line)} bytes) left by an interrupted run", file=sys.stderr)
            if repair:
                with open(path, "r+b") as f:
                    f.truncate(len(raw) - len(line))
            return rows
        rows.append(row)
    if repair and raw and not raw.endswith(b"\n"):
        with open(path, "ab") as f:  # a whole last row missing only its newline
            f.write(b"\n")
    return rows


def load_sample_rows(path: str | os.PathLike) -> list[dict]:
    """Rows with ``prompt`` and ``completions`` from any file tether reads (a ``tether sample``
    output, ``bundled:review_candidates``, ...); a row without them is an error naming it."""
    from tether.data import DataError, read_rows

    rows = []
    for source, row in read_rows(path):
        if isinstance(row, DataError):
            raise row
        if "prompt" not in row or not isinstance(row.get("completions"), list):
            raise DataError(source.path, source.line, "completions", "a sample row needs 'prompt' and a list of 'completions'")
        rows.append(row)
    if not rows:
        raise DataError(str(path), None, None, "no sample rows")
    return rows


def _check_existing(path: Path, rows: list[dict], prompts: list, k: int, sampling: dict, fingerprint: str) -> None:
    if len(rows) > len(prompts):
        raise ValueError(f"{path} holds {len(rows)} rows but there are only {len(prompts)} prompts: not a run over these prompts")
    for i, row in enumerate(rows):
        where = f"{path}:{i + 1}"
        if row.get("prompt") != prompts[i]:
            raise ValueError(f"{where}: prompt differs from input prompt {i + 1}; the file belongs to another prompt set (use another --output)")
        if row.get("sampling") != sampling:
            raise ValueError(f"{where}: written with sampling {row.get('sampling')}, this run uses {sampling}; use another --output to sample with other settings")
        if row.get("model_fingerprint") != fingerprint:
            raise ValueError(f"{where}: written by a model with fingerprint {row.get('model_fingerprint')}, this model's is {fingerprint}")
        if len(row["completions"]) != k:
            raise ValueError(f"{where}: {len(row['completions'])} completions, this run asks for {k}")


def sample_pairs(rows: Sequence[dict], max_pairs_per_prompt: int | None = None, seed: int = 0) -> list[tuple]:
    """``(prompt, a, b)`` for every two distinct completions of each row (in the order written), or
    a seeded sample of at most ``max_pairs_per_prompt`` of them per prompt. Repeated texts count once."""
    import itertools
    import random

    rng = random.Random(seed)
    out = []
    for row in rows:
        pairs = list(itertools.combinations(list(dict.fromkeys(row["completions"])), 2))
        if max_pairs_per_prompt is not None and len(pairs) > max_pairs_per_prompt:
            pairs = rng.sample(pairs, max_pairs_per_prompt)
        out += [(row["prompt"], a, b) for a, b in pairs]
    return out


def prompt_text(value) -> str:
    """A written prompt as the plain text a judge or gold function reads: the text itself, or the
    conversation's turns as 'role: content' lines."""
    if isinstance(value, str):
        return value
    if len(value) == 1:
        return value[0]["content"]
    return "\n".join(f"{m['role']}: {m['content']}" for m in value)


def write_jsonl(path: str | os.PathLike, rows: Sequence[dict]) -> None:
    """Write rows to ``path`` atomically (a temporary file, then a rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


class _Progress:
    """A rich progress bar on a terminal; otherwise one plain line per batch (logs stay readable)."""

    def __init__(self, total: int, done: int, enabled: bool):
        self.total, self.done, self.enabled, self.start = total, done, enabled, time.perf_counter()
        self.bar = None
        if enabled and sys.stderr.isatty():
            from rich.progress import Progress

            self.bar = Progress(transient=False)
            self.bar.start()
            self.task = self.bar.add_task("sampling", total=total, completed=done)

    def advance(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.advance(self.task, n)
        elif self.enabled:
            print(f"sample: {self.done}/{self.total} prompts, {time.perf_counter() - self.start:.1f} s", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def sample_file(
    model,
    tokenizer,
    prompts: Sequence[list[dict]],
    output: str | os.PathLike,
    *,
    k: int = 4,
    settings: SampleSettings = SampleSettings(),
    batch_size: int = 8,
    model_name: str = "",
    progress: bool = True,
    after_batch: Callable[[int], None] | None = None,
    max_seconds: float | None = None,
) -> SampleReport:
    """Write K completions for each of ``prompts`` (chat messages ending in a user turn) to ``output``,
    resuming a file an earlier run over the same prompts, model and settings left unfinished.
    ``batch_size`` is in prompts (each engine call holds ``batch_size * k`` rows).
    ``after_batch(rows_written)`` is called after each flushed batch (tests kill a run there).
    ``max_seconds`` bounds the sampling time: no batch starts that the last one's duration says
    would end past it (the first always runs); the prompts after the last batch are left unsampled
    (the report's ``written`` says how many were; the caller warns)."""
    from tether.rollout.engine import SamplingParams, encode_prompts, generate

    if k < 1 or batch_size < 1:
        raise ValueError(f"k and batch_size must be at least 1, got k={k}, batch_size={batch_size}")
    params = SamplingParams(max_new_tokens=settings.max_new_tokens, temperature=settings.temperature, top_p=settings.top_p, top_k=settings.top_k)
    sampling = asdict(settings)
    values = [prompt_value(p) for p in prompts]
    fingerprint = model_fingerprint(model)
    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    done = 0
    if path.exists() and path.stat().st_size:
        existing = read_sample_rows(path, repair=True)
        _check_existing(path, existing, values, k, sampling, fingerprint)
        done = len(existing)
        print(f"sample: resuming {path}: {done} of {len(values)} prompts already written", file=sys.stderr)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    bar = _Progress(len(values), done, progress)
    written = 0
    try:
        with open(path, "a", encoding="utf-8") as f:
            for lo in range(done, len(values), batch_size):
                batch_started = time.perf_counter() - start
                hi = min(lo + batch_size, len(values))
                ids = encode_prompts(tokenizer, list(prompts[lo:hi]))
                rows_ids = [p for p in ids for _ in range(k)]  # prompt-major: row i*k + j is completion j of prompt i
                gens = [torch.Generator(device=device).manual_seed(completion_seed(settings.seed, i, j)) for i in range(lo, hi) for j in range(k)]
                texts = generate(model, tokenizer, rows_ids, params, gens).texts
                lines = []
                for n, i in enumerate(range(lo, hi)):
                    row = {"prompt": values[i], "completions": texts[n * k : (n + 1) * k], "sampling": sampling, "model": model_name, "model_fingerprint": fingerprint}
                    lines.append(json.dumps(row, ensure_ascii=False) + "\n")
                f.write("".join(lines))  # one write per batch, then flushed to disk before the next one
                f.flush()
                os.fsync(f.fileno())
                written += hi - lo
                bar.advance(hi - lo)
                if after_batch is not None:
                    after_batch(done + written)
                elapsed = time.perf_counter() - start
                if max_seconds is not None and elapsed + (elapsed - batch_started) > max_seconds:
                    break  # the next batch, as long as this one, would end past the budget
    finally:
        bar.close()
        model.train(was_training)
    return SampleReport(str(path), len(values), done, written, time.perf_counter() - start)


def run_sample(args) -> int:
    """The `tether sample` command."""
    from tether.data import load_records
    from tether.models import load_model

    prompts = [r.prompt for r in load_records(args.prompts, kind="prompt").records]
    if args.limit is not None:
        prompts = prompts[: args.limit]
    if not prompts:
        raise ValueError(f"{args.prompts}: no prompts")
    model, tokenizer = load_model(args.model)
    settings = SampleSettings(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, max_new_tokens=args.max_new_tokens, seed=args.seed)
    report = sample_file(model, tokenizer, prompts, args.output, k=args.k, settings=settings, batch_size=args.batch_size, model_name=args.model)
    rate = report.written * args.k / report.seconds if report.seconds > 0 else float("nan")
    print(
        f"sample: {report.output}: {report.resumed + report.written}/{report.prompts} prompts "
        f"({report.resumed} already there, {report.written} written now) in {report.seconds:.1f} s, {rate:.2f} completions/s"
    )
    return 0


__all__ = [
    "SampleReport",
    "SampleSettings",
    "completion_seed",
    "load_sample_rows",
    "model_fingerprint",
    "prompt_messages",
    "prompt_text",
    "prompt_value",
    "read_sample_rows",
    "sample_file",
    "sample_pairs",
    "write_jsonl",
]
