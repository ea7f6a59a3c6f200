"""Active vs random selection of pairs to label, with simulated annotators, on the sentiment task.

A cheap stand-in for the real loop (label → train a reward-model ensemble → pick the next pairs):

* features: the default model's hidden state after its first ``--layers`` decoder layers (and the
  final norm), averaged over each reply's tokens (prompt + reply through the frozen model, once;
  cached in ``--cache``) for the 16 replies per prompt of ``bundled:review_candidates``; 6 layers,
  as the pipeline's reward model (``rm.layers``), because sentiment is lexical;
* reward model: an ensemble of linear heads on those frozen features, each fitted by Bradley–Terry
  (logistic regression on feature differences, L2 penalty) to a bootstrap resample of the labels;
* pool: every pair of replies of the 60 training prompts whose VADER gap exceeds 0.1, labelled on
  request by a simulated annotator (Bradley–Terry noise at ``--tau``); test: the same kind of
  pairs from the 20 held-out prompts (the split of ``bench/reward_accuracy.py gold``), gold labels;
* selection: ``random`` (uniform over the unlabelled pool), ``disagreement`` (largest standard
  deviation of the members' P(a ≻ b)) and ``even`` (ensemble mean P(a ≻ b) closest to 0.5).

It prints held-out accuracy against the number of labels for each strategy (mean over seeds).
This measures selection on frozen features, not a fine-tuned reward model.

    flock /tmp/tether-heavy.lock env PYTHONPATH=src OMP_NUM_THREADS=2 .venv/bin/python bench/active_selection.py
"""

from __future__ import annotations

import argparse
import itertools
import random
import time
from pathlib import Path

import torch


@torch.no_grad()
def reply_features(rows: list[dict], layers: int, batch_size: int = 16) -> torch.Tensor:
    """[P, K, H] mean hidden state over each reply's tokens, default model cut to its first
    ``layers`` layers (0: all), prompt as context."""
    from tether.data.encode import encode
    from tether.feedback.sample import prompt_messages
    from tether.models import forward_hidden, load_model
    from tether.models.forward import keep_first_layers

    model, tokenizer = load_model("default")
    if layers:
        keep_first_layers(model, layers)
    model.eval()
    pad = tokenizer.pad_token_id
    encoded = [encode(tokenizer, prompt_messages(r["prompt"]), c) for r in rows for c in r["completions"]]
    out = []
    for lo in range(0, len(encoded), batch_size):
        chunk = encoded[lo : lo + batch_size]
        width = max(len(e.input_ids) for e in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)  # [b, T] right-padded
        mask = torch.zeros(len(chunk), width, dtype=torch.long)  # [b, T]
        reply = torch.zeros(len(chunk), width)  # [b, T] 1 on reply tokens
        for i, e in enumerate(chunk):
            ids[i, : len(e.input_ids)] = torch.tensor(e.input_ids)
            mask[i, : len(e.input_ids)] = 1
            reply[i, e.prompt_len : len(e.input_ids)] = 1
        positions = (mask.cumsum(1) - 1).clamp(min=0)  # [b, T]
        hidden = forward_hidden(model, ids, positions, mask)  # [b, T, H]
        out.append((hidden * reply[..., None]).sum(1) / reply.sum(1, keepdim=True))  # [b, H]
        print(f"features: {min(lo + batch_size, len(encoded))}/{len(encoded)}", flush=True)
    k = len(rows[0]["completions"])
    return torch.cat(out).view(len(rows), k, -1)  # [P, K, H]


def pairs_of(prompt_ids: list[int], gold: torch.Tensor, min_gap: float) -> torch.Tensor:
    """[N, 3] (prompt, i, j) with |gold[p, i] − gold[p, j]| > min_gap."""
    k = gold.shape[1]
    return torch.tensor([(p, i, j) for p in prompt_ids for i, j in itertools.combinations(range(k), 2) if abs(gold[p, i] - gold[p, j]) > min_gap])


def fit_heads(diffs: torch.Tensor, labels: torch.Tensor, members: int, l2: float, gen: torch.Generator) -> torch.Tensor:
    """[M, H] linear heads, each Bradley–Terry on a bootstrap resample of (diffs [n, H], labels [n] in {0, 1})."""
    n, h = diffs.shape
    heads = []
    for _ in range(members):
        idx = torch.randint(n, (n,), generator=gen)  # [n]
        x, y = diffs[idx], labels[idx]
        w = torch.zeros(h, requires_grad=True)
        opt = torch.optim.LBFGS([w], max_iter=100, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w, y) + l2 * w.square().sum()
            loss.backward()
            return loss

        opt.step(closure)
        heads.append(w.detach())
    return torch.stack(heads)  # [M, H]


def run(features, gold, train_ids, test_ids, args, strategy: str, seed: int) -> list[float]:
    from tether.feedback.simulated import SimulatedAnnotator

    gen = torch.Generator().manual_seed(seed)
    pool = pairs_of(train_ids, gold, 0.1)  # [N, 3]
    test = pairs_of(test_ids, gold, 0.1)  # [Nt, 3]
    diff = lambda pr: features[pr[:, 0], pr[:, 1]] - features[pr[:, 0], pr[:, 2]]  # noqa: E731  [N, H]
    pool_d, test_d = diff(pool), diff(test)
    test_y = gold[test[:, 0], test[:, 1]] > gold[test[:, 0], test[:, 2]]  # [Nt]
    annotator = SimulatedAnnotator(gold=None, temperature=args.tau, seed=seed)
    gap = gold[pool[:, 0], pool[:, 1]] - gold[pool[:, 0], pool[:, 2]]  # [N]
    labelled = torch.randperm(len(pool), generator=gen)[: args.start].tolist()
    labels = annotator.label_from_gap(gap[labelled].double()).float()  # [n] each pair is labelled once, when asked
    accuracy = []
    while True:
        heads = fit_heads(pool_d[labelled], labels, args.members, args.l2, gen)  # [M, H]
        accuracy.append(float(((test_d @ heads.mean(0) > 0) == test_y).float().mean()))
        if len(labelled) >= args.budget:
            return accuracy
        rest = torch.ones(len(pool), dtype=torch.bool)
        rest[labelled] = False
        candidates = rest.nonzero()[:, 0]  # [R]
        if strategy == "random":
            pick = candidates[torch.randperm(len(candidates), generator=gen)[: args.step]]
        else:
            p = torch.sigmoid(pool_d[candidates] @ heads.T)  # [R, M] each member's P(a ≻ b)
            score = p.std(dim=1) if strategy == "disagreement" else -(p.mean(dim=1) - 0.5).abs()  # [R] larger: ask first
            pick = candidates[torch.topk(score, args.step).indices]
        labelled += pick.tolist()
        labels = torch.cat([labels, annotator.label_from_gap(gap[pick].double()).float()])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", default=None, help="features file (default /tmp/tether-active-features-<layers>.pt)")
    parser.add_argument("--layers", type=int, default=6, help="decoder layers the features read (0: all)")
    parser.add_argument("--tau", type=float, default=0.1, help="the simulated annotator's Bradley-Terry temperature")
    parser.add_argument("--members", type=int, default=5)
    parser.add_argument("--l2", type=float, default=1e-3)
    parser.add_argument("--start", type=int, default=20)
    parser.add_argument("--step", type=int, default=20)
    parser.add_argument("--budget", type=int, default=200)
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()

    from tether.feedback.sample import load_sample_rows
    from tether.feedback.simulated import vader_gold

    rows = load_sample_rows("bundled:review_candidates")
    random.Random(0).shuffle(rows)  # the split of bench/reward_accuracy.py gold: the first quarter held out
    n_eval = len(rows) // 4
    cache = Path(args.cache or f"/tmp/tether-active-features-{args.layers}.pt")
    if cache.exists():
        features = torch.load(cache, weights_only=True)
    else:
        start = time.perf_counter()
        features = reply_features(rows, args.layers)
        torch.save(features, cache)
        print(f"features: {tuple(features.shape)} in {time.perf_counter() - start:.0f} s -> {cache}")
    features = (features - features[n_eval:].mean((0, 1))) / features[n_eval:].std((0, 1)).clamp_min(1e-6)  # standardised on the training prompts
    gold = torch.tensor([[vader_gold(c) for c in r["completions"]] for r in rows])  # [P, K]
    train_ids, test_ids = list(range(n_eval, len(rows))), list(range(n_eval))
    print(f"pool: {len(pairs_of(train_ids, gold, 0.1))} pairs from {len(train_ids)} prompts; test: {len(pairs_of(test_ids, gold, 0.1))} pairs from {len(test_ids)} prompts")
    counts = list(range(args.start, args.budget + args.step, args.step))  # the loop labels past the budget's last step once
    print("labels      " + " ".join(f"{n:>6d}" for n in counts))
    for strategy in ("random", "disagreement", "even"):
        curves = torch.tensor([run(features, gold, train_ids, test_ids, args, strategy, seed) for seed in range(args.seeds)])  # [S, C]
        print(f"{strategy:<12s}" + " ".join(f"{a:6.3f}" for a in curves.mean(0).tolist()) + f"   (± {float(curves.std(0).mean()):.3f} sd over {args.seeds} seeds)")


if __name__ == "__main__":
    main()
