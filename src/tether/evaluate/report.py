"""One self-contained HTML report of an alignment experiment: plots inline as SVG, no network.

``render_report(data) -> str`` takes plain data (numbers, strings, lists), so anything that
produced the figures (``tether pipeline``, a notebook, a script) can call it. The sections, each
optional, and what ``data`` holds for them:

* ``curves``: ``{method: {metric: [[step, value], ...]}}`` — training curves, one panel per metric.
* ``frontier``: ``[{"method", "kl", "gold", "gold_stderr"?, "label"?}]`` — gold reward against KL to
  the reference, one line per method (several points per method come from a KL sweep).
* ``winrates``: ``[{"method", "judge", "win_rate", "ci": [lo, hi], "lc_win_rate"?, "lc_ci"?, "n"}]``.
* ``reward_model``: ``{"accuracy", "ece", "length_baseline"?, "bins": [{"confidence", "accuracy",
  "count"}]}`` — a reliability diagram.
* ``overoptimisation``: ``{method: {"step": [...], "kl": [...], "proxy": [...], "gold": [...],
  "warnings": [{"step", "kl", "kind", "message"}]}}`` — proxy and gold reward against KL (Gao,
  Schulman and Hilton 2022) and against the step ("step" optional), the reward-hacking monitor's
  warnings marked where they fired.
* ``samples``: ``[{"prompt", "before", "after": {method: text}}]`` — responses side by side.
* ``stages``: ``[{"stage", "seconds", "reused"}]`` — wall time per pipeline stage.

Every string from data (model text above all) is escaped.
"""

from __future__ import annotations

import html
import io
from collections.abc import Sequence

_STYLE = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 2rem auto; max-width: 1100px; color: #1b1f24; padding: 0 1rem; }
h1 { font-size: 1.7rem; margin-bottom: .2rem; } h2 { margin-top: 2.2rem; border-bottom: 1px solid #d0d7de; padding-bottom: .3rem; }
.meta { color: #57606a; } table { border-collapse: collapse; margin: .8rem 0; }
th, td { border: 1px solid #d0d7de; padding: .35rem .7rem; text-align: left; vertical-align: top; }
th { background: #f6f8fa; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.plots { display: flex; flex-wrap: wrap; gap: 1rem; } .plot svg { max-width: 100%; height: auto; }
.sample td { white-space: pre-wrap; overflow-wrap: anywhere; max-width: 22rem; font-size: .92rem; }
.warn { color: #9a6700; } .note { color: #57606a; font-size: .92rem; }
"""


def _esc(value) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return _esc(value)


def _svg(fig) -> str:
    """A matplotlib figure as an inline <svg> element (its XML prologue dropped)."""
    import matplotlib.pyplot as plt

    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buffer.getvalue()
    return text[text.index("<svg") :]


def _figure(width: float = 5.2, height: float = 3.4):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    plt.rcParams["svg.fonttype"] = "none"  # keep text as text: smaller files, searchable labels
    return plt.subplots(figsize=(width, height))


def _curves_section(curves: dict) -> str:
    metrics = sorted({m for per_method in curves.values() for m in per_method})
    plots = []
    for metric in metrics:
        fig, ax = _figure(4.6, 3.0)
        for method, per_method in curves.items():
            points = per_method.get(metric)
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], label=method, linewidth=1.5)
        ax.set_xlabel("step")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        plots.append(f'<div class="plot">{_svg(fig)}</div>')
    return '<h2 id="curves">Training curves</h2><div class="plots">' + "".join(plots) + "</div>"


def _frontier_section(points: Sequence[dict]) -> str:
    fig, ax = _figure()
    methods = list(dict.fromkeys(p["method"] for p in points))
    for method in methods:
        mine = sorted((p for p in points if p["method"] == method), key=lambda p: p["kl"])
        xs, ys = [p["kl"] for p in mine], [p["gold"] for p in mine]
        errs = [p.get("gold_stderr") or 0.0 for p in mine]
        ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, label=method, linewidth=1.5)
    ax.set_xlabel("KL(policy ‖ reference), nats per response")
    ax.set_ylabel("gold reward (held-out prompts)")
    ax.set_title("Reward-versus-KL frontier")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    rows = "".join(
        f"<tr><td>{_esc(p['method'])}</td><td>{_esc(p.get('label', ''))}</td><td class=num>{_fmt(p['kl'])}</td>"
        f"<td class=num>{_fmt(p['gold'])}</td><td class=num>{_fmt(p.get('gold_stderr'))}</td></tr>"
        for p in points
    )
    table = f"<table><tr><th>method</th><th>setting</th><th>KL</th><th>gold reward</th><th>± stderr</th></tr>{rows}</table>"
    return f'<h2 id="frontier">Reward versus KL</h2><div class="plot">{_svg(fig)}</div>{table}'


def _interval(ci) -> str:
    return "–" if not ci else f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def _winrate_section(rows: Sequence[dict]) -> str:
    body = "".join(
        f"<tr><td>{_esc(r['method'])}</td><td>{_esc(r['judge'])}</td><td class=num>{_fmt(r['win_rate'])}</td>"
        f"<td class=num>{_interval(r.get('ci'))}</td><td class=num>{_fmt(r.get('lc_win_rate'))}</td>"
        f"<td class=num>{_interval(r.get('lc_ci'))}</td><td class=num>{_fmt(r.get('n'))}</td></tr>"
        for r in rows
    )
    return (
        '<h2 id="winrates">Win-rate against the starting policy</h2>'
        "<table><tr><th>method</th><th>judge</th><th>win-rate</th><th>95% interval</th>"
        "<th>length-controlled</th><th>95% interval</th><th>prompts</th></tr>"
        f"{body}</table><p class=note>Ties count as halves; intervals from a paired bootstrap over prompts. "
        "The length-controlled win-rate is the judge's verdict predicted at equal length by a logistic fit "
        "with a length-difference term, refitted in every bootstrap round.</p>"
    )


def _reward_model_section(rm: dict) -> str:
    fig, ax = _figure(4.2, 4.0)
    bins = [b for b in rm.get("bins", []) if b.get("count", 0) > 0]
    ax.plot([0.5, 1.0], [0.5, 1.0], linestyle="--", color="gray", linewidth=1, label="perfect calibration")
    if bins:
        ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], marker="o", label="reward model")
        for b in bins:
            ax.annotate(str(b["count"]), (b["confidence"], b["accuracy"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("predicted P(chosen ≻ rejected)")
    ax.set_ylabel("observed accuracy")
    ax.set_title("Reliability diagram")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    facts = f"accuracy {_fmt(rm.get('accuracy'))}, ECE {_fmt(rm.get('ece'))}"
    if rm.get("length_baseline") is not None:
        facts += f", the longer reply wins: {_fmt(rm['length_baseline'])}"
    if rm.get("n") is not None:
        facts += f", on {_fmt(rm['n'])} held-out pairs"
    return f'<h2 id="reward-model">Reward model</h2><p>{facts}</p><div class="plot">{_svg(fig)}</div>'


def _proxy_and_gold(x: Sequence[float], d: dict, xlabel: str, title: str, marks: Sequence[tuple[float, str]]) -> str:
    """One panel: the proxy (left axis) and gold reward (right axis) against x, the monitors' warnings as vertical lines."""
    fig, ax = _figure(4.8, 3.3)
    ax.plot(x, d["proxy"], marker=".", markersize=3, label="proxy (reward model)", color="#0969da")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("proxy reward", color="#0969da")
    gold_ax = ax.twinx()
    gold_ax.plot(x, d["gold"], marker=".", markersize=3, label="gold", color="#cf222e")
    gold_ax.set_ylabel("gold reward", color="#cf222e")
    for at, kind in marks:
        ax.axvline(at, color="#9a6700", linestyle=":", linewidth=1.2)
        ax.annotate(kind, (at, 1.0), xycoords=("data", "axes fraction"), rotation=90, fontsize=7, va="top", ha="right", color="#9a6700")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return f'<div class="plot">{_svg(fig)}</div>'


def _overoptimisation_section(per_method: dict) -> str:
    plots, notes = [], []
    for method, d in per_method.items():
        warnings = d.get("warnings", [])
        plots.append(_proxy_and_gold(d["kl"], d, "KL(policy ‖ reference)", f"{method}: proxy and gold reward against KL", [(w["kl"], w["kind"]) for w in warnings]))
        # KL need not grow monotonically (a policy collapsed onto one repeated token can sit closer to
        # the reference than it did on the way there), so the same curves against the step as well.
        if d.get("step"):
            plots.append(_proxy_and_gold(d["step"], d, "training step", f"{method}: against the training step", [(w["step"], w["kind"]) for w in warnings if "step" in w]))
        notes.extend(f"<li class=warn>{_esc(method)}: {_esc(w['kind'])} at KL {_fmt(w['kl'])}: {_esc(w.get('message', ''))}</li>" for w in warnings)
    warnings = f"<ul>{''.join(notes)}</ul>" if notes else "<p class=note>No reward-hacking monitor fired.</p>"
    return '<h2 id="overoptimisation">Reward over-optimisation</h2><div class="plots">' + "".join(plots) + "</div>" + warnings


def _samples_section(samples: Sequence[dict]) -> str:
    methods = list(dict.fromkeys(m for s in samples for m in s.get("after", {})))
    head = "<tr><th>prompt</th><th>before</th>" + "".join(f"<th>{_esc(m)}</th>" for m in methods) + "</tr>"
    rows = "".join(
        "<tr class=sample>"
        f"<td>{_esc(s['prompt'])}</td><td>{_esc(s['before'])}</td>"
        + "".join(f"<td>{_esc(s.get('after', {}).get(m, ''))}</td>" for m in methods)
        + "</tr>"
        for s in samples
    )
    return f'<h2 id="samples">Responses before and after</h2><table>{head}{rows}</table>'


def _stages_section(stages: Sequence[dict]) -> str:
    rows = "".join(
        f"<tr><td>{_esc(s['stage'])}</td><td class=num>{s['seconds']:.1f}</td><td>{'reused' if s.get('reused') else 'ran'}</td></tr>" for s in stages
    )
    total = sum(s["seconds"] for s in stages if not s.get("reused"))
    return f'<h2 id="stages">Stages</h2><table><tr><th>stage</th><th>seconds</th><th></th></tr>{rows}</table><p class=note>{total:.0f} s run this time.</p>'


_SECTIONS = [
    ("winrates", _winrate_section),
    ("frontier", _frontier_section),
    ("overoptimisation", _overoptimisation_section),
    ("curves", _curves_section),
    ("reward_model", _reward_model_section),
    ("samples", _samples_section),
    ("stages", _stages_section),
]


def render_report(data: dict) -> str:
    """The report as one HTML string; sections whose data are missing or empty are left out."""
    known = {name for name, _ in _SECTIONS} | {"title", "meta"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"report data has unknown sections {unknown}; known: {sorted(known)}")
    title = data.get("title", "tether report")
    meta = "".join(f"<div>{_esc(k)}: {_esc(v)}</div>" for k, v in data.get("meta", {}).items())
    body = "".join(render(data[name]) for name, render in _SECTIONS if data.get(name))
    return (
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{_esc(title)}</title>"
        f"<meta name=viewport content='width=device-width, initial-scale=1'><style>{_STYLE}</style></head>"
        f"<body><h1>{_esc(title)}</h1><div class=meta>{meta}</div>{body}</body></html>"
    )


def write_report(data: dict, path) -> None:
    from pathlib import Path

    Path(path).write_text(render_report(data), encoding="utf-8")


__all__ = ["render_report", "write_report"]
