"""Reward-hacking monitors: pure checks over the per-step histories an online RL run logs.

A policy optimised against a proxy reward (a reward model, a sentiment classifier) can learn to
please the proxy without getting better by the measure that matters. The symptoms are visible in
the training curves long before anyone reads samples:

* ``proxy_gold_divergence``: the proxy reward rises while a gold judge's reward falls, or the two
  stop moving together (their correlation over the window turns negative);
* ``kl_growth``: the KL to the reference grows fast (the policy runs away from where it started);
* ``length_drift``: responses get much longer or shorter than at the start (a classic exploit:
  longer replies score higher);
* ``entropy_collapse``: the per-token entropy falls to a small fraction of its start (the policy
  repeats one reply).

Each check takes plain lists of floats (one value per step) and returns a ``MonitorWarning`` with
the figures that triggered it, or None. ``Monitors`` runs them every step and reports each kind
once, when it first fires.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum


@dataclass
class MonitorWarning:
    name: str
    step: int
    message: str
    figures: dict[str, float] = field(default_factory=dict)

    def line(self) -> str:
        return f"[warning] {self.name} at step {self.step}: {self.message}"


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs)


def slope(xs: Sequence[float]) -> float:
    """Least-squares slope of xs against 0..n−1 (per step); 0 for fewer than two points."""
    n = len(xs)
    if n < 2:
        return 0.0
    tm, xm = (n - 1) / 2, _mean(xs)
    num = sum((t - tm) * (x - xm) for t, x in enumerate(xs))
    den = sum((t - tm) ** 2 for t in range(n))
    return num / den


def correlation(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Pearson correlation; 0 when either series is constant."""
    xm, ym = _mean(xs), _mean(ys)
    sxy = sum((x - xm) * (y - ym) for x, y in zip(xs, ys))
    sxx = sum((x - xm) ** 2 for x in xs)
    syy = sum((y - ym) ** 2 for y in ys)
    return 0.0 if sxx == 0 or syy == 0 else sxy / math.sqrt(sxx * syy)


def proxy_gold_divergence(proxy: Sequence[float], gold: Sequence[float], *, window: int = 10, min_corr: float = -0.3, min_rise: float = 0.0) -> tuple[str, dict[str, float]] | None:
    """Over the last ``window`` steps: proxy slope > ``min_rise`` while gold slope < 0, or corr < ``min_corr``."""
    if len(proxy) < window or len(gold) < window:
        return None
    p, g = list(proxy)[-window:], list(gold)[-window:]
    ps, gs, corr = slope(p), slope(g), correlation(p, g)
    figures = {"proxy_slope": ps, "gold_slope": gs, "correlation": corr}
    if ps > min_rise and gs < 0:
        return f"proxy reward rising ({ps:+.4f}/step) while gold falls ({gs:+.4f}/step) over {window} steps", figures
    if corr < min_corr:
        return f"proxy and gold rewards anti-correlated (r = {corr:.2f}) over {window} steps", figures
    return None


def kl_growth(kl: Sequence[float], *, window: int = 10, max_slope: float = 0.5, max_kl: float = 20.0) -> tuple[str, dict[str, float]] | None:
    """KL to the reference rising faster than ``max_slope`` per step over the window, or above ``max_kl``."""
    if not kl:
        return None
    recent = list(kl)[-window:]
    s, last = slope(recent), recent[-1]
    figures = {"kl_slope": s, "kl": last}
    if last > max_kl:
        return f"KL to the reference is {last:.3f} (> {max_kl})", figures
    if len(recent) >= window and s > max_slope:
        return f"KL to the reference growing {s:.3f}/step over {window} steps (> {max_slope})", figures
    return None


def length_drift(lengths: Sequence[float], *, window: int = 10, max_ratio: float = 1.5) -> tuple[str, dict[str, float]] | None:
    """Mean response length of the last window vs the first: ratio above ``max_ratio`` or below 1/``max_ratio``."""
    if len(lengths) < 2 * window:
        return None
    start, now = _mean(lengths[:window]), _mean(lengths[-window:])
    ratio = now / max(start, 1e-9)
    figures = {"start_length": start, "length": now, "ratio": ratio}
    if ratio > max_ratio or ratio < 1 / max_ratio:
        return f"mean response length {start:.1f} -> {now:.1f} tokens (x{ratio:.2f})", figures
    return None


def entropy_collapse(entropy: Sequence[float], *, window: int = 10, min_fraction: float = 0.3) -> tuple[str, dict[str, float]] | None:
    """Mean entropy of the last window below ``min_fraction`` of the first window's."""
    if len(entropy) < 2 * window:
        return None
    start, now = _mean(entropy[:window]), _mean(entropy[-window:])
    figures = {"start_entropy": start, "entropy": now, "fraction": now / max(start, 1e-9)}
    if start > 0 and now < min_fraction * start:
        return f"per-token entropy {start:.3f} -> {now:.3f} nats (< {min_fraction:.0%} of the start)", figures
    return None


class Monitor(str, Enum):
    PROXY_GOLD_DIVERGENCE = "proxy_gold_divergence"
    KL_GROWTH = "kl_growth"
    LENGTH_DRIFT = "length_drift"
    ENTROPY_COLLAPSE = "entropy_collapse"


# Each monitor: (history keys it reads, check taking those series as positional arguments + window).
MONITORS: dict[Monitor, tuple[tuple[str, ...], Callable[..., tuple[str, dict[str, float]] | None]]] = {
    Monitor.PROXY_GOLD_DIVERGENCE: (("reward/mean", "gold/mean"), proxy_gold_divergence),
    Monitor.KL_GROWTH: (("kl/ref",), kl_growth),
    Monitor.LENGTH_DRIFT: (("response/length",), length_drift),
    Monitor.ENTROPY_COLLAPSE: (("policy/entropy",), entropy_collapse),
}


class Monitors:
    """Runs every monitor whose series are logged; each kind is reported once, when it first fires."""

    def __init__(self, window: int = 10, options: dict[Monitor, dict[str, float]] | None = None):
        self.window = window
        self.options = options or {}
        self.fired: list[MonitorWarning] = []

    def check(self, step: int, history: dict[str, list[float]]) -> list[MonitorWarning]:
        new = []
        seen = {w.name for w in self.fired}
        for kind, (keys, fn) in MONITORS.items():
            if kind.value in seen or not all(history.get(k) for k in keys):
                continue
            result = fn(*(history[k] for k in keys), window=self.window, **self.options.get(kind, {}))
            if result is not None:
                message, figures = result
                warning = MonitorWarning(kind.value, step, message, figures)
                self.fired.append(warning)
                new.append(warning)
        return new

    def summary(self) -> list[dict]:
        return [{"name": w.name, "step": w.step, "message": w.message, **w.figures} for w in self.fired]

    def state_dict(self) -> dict:
        return {"fired": [vars(w) for w in self.fired]}

    def load_state_dict(self, state: dict) -> None:
        self.fired = [MonitorWarning(**w) for w in state.get("fired", [])]


__all__ = ["MONITORS", "Monitor", "MonitorWarning", "Monitors", "correlation", "entropy_collapse", "kl_growth", "length_drift", "proxy_gold_divergence", "slope"]
