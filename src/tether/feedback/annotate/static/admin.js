"use strict";

(() => {
  const { api, el, showError } = tether;
  const $ = (id) => document.getElementById(id);

  function fig(f) {
    if (!f) return "n/a";
    if (f.value === null) return f.n ? "undefined (n = " + f.n + "; too few, or every label alike)" : "n/a (no data yet)";
    const ci = f.low === null ? "" : " [" + f.low.toFixed(2) + ", " + f.high.toFixed(2) + "]";
    return f.value.toFixed(3) + ci + " (n = " + f.n + ")";
  }

  function table(node, head, rows) {
    node.replaceChildren();
    const tr = el("tr");
    for (const h of head) tr.append(el("th", h));
    node.append(tr);
    for (const row of rows) {
      const r = el("tr");
      for (const cell of row) r.append(el("td", cell === null || cell === undefined ? "" : cell));
      node.append(r);
    }
  }

  function line(label, value) {
    const p = el("p");
    p.append(el("strong", label + ": "), el("span", value));
    return p;
  }

  async function refresh() {
    const r = await api("GET", "/api/admin/report");
    if (r.status !== 200) { showError(r.data.error || "cannot load the report"); return; }
    showError("");
    const d = r.data;
    const p = d.progress;
    $("who").textContent = d.task + ", each item to " + d.overlap + " annotator(s)";
    const bar = el("progress"); bar.max = p.judgements_needed; bar.value = p.judgements;
    $("progress").replaceChildren(bar, el("span", " " + p.judgements + " of " + p.judgements_needed + " judgements; " + p.items_complete + " of " + p.items + " items complete"));
    table($("annotators"), ["annotator", "judgements", "median s / item", "per hour", d.task === "pairwise" ? "left wins [95% CI]" : "first shown ranked best [95% CI]"],
      d.annotators.map((a) => [a.name, a.judgements, a.median_seconds === null ? null : a.median_seconds.toFixed(1), a.per_hour === null ? null : Math.round(a.per_hour), fig(a.first_shown_wins)]));
    const ag = $("agreement");
    ag.replaceChildren();
    if (d.task === "pairwise") {
      ag.append(line("Fleiss' kappa, items seen by 2+ annotators", fig(d.agreement.fleiss_kappa)));
      const t = el("table");
      table(t, ["Cohen's kappa", "annotators", "shared items"], d.agreement.cohen_kappa.map((c) => [fig(c), c.annotators.join(" & "), c.n]));
      ag.append(t);
      if (d.agreement.cohen_pairs > d.agreement.cohen_kappa.length) ag.append(el("p", "Showing the " + d.agreement.cohen_kappa.length + " of " + d.agreement.cohen_pairs + " annotator pairs that share the most items.", "help"));
    } else {
      ag.append(line("Kendall's tau, mean over annotator pairs and items", fig(d.agreement.kendall_tau)));
      if (d.agreement.fleiss_kappa_top) ag.append(line("Fleiss' kappa on the reply ranked first", fig(d.agreement.fleiss_kappa_top)));
    }
    if (d.ai) {
      $("ai-box").hidden = false;
      $("ai").replaceChildren(
        line("Agree with " + (d.ai.judge || "the AI judge") + " when its suggestion is shown", fig(d.ai.agree_when_shown)),
        line("Agree with it when it is not shown", fig(d.ai.agree_when_hidden)),
        el("p", "The gap between the two is how much annotators follow the suggestion rather than reach the same verdict on their own.", "help"));
    }
    const rows = d.disputed.map((x) => [x.item, x.prompt, d.task === "pairwise" ? x.agreement : x.kendall_tau,
      d.task === "pairwise" ? Object.entries(x.votes).map(([k, v]) => k + " " + v).join(", ") : Object.entries(x.rankings).map(([k, v]) => k + ": " + v.join(">")).join("; "),
      x.reasons.join(" | ")]);
    $("no-disputes").hidden = rows.length > 0;
    table($("disputed"), ["item", "prompt", d.task === "pairwise" ? "agreement" : "Kendall's tau", d.task === "pairwise" ? "votes" : "rankings", "reasons"], rows);
    $("status").textContent = "updated " + new Date().toLocaleTimeString();
  }

  if (!tether.token) showError("No access token: open the admin link you were given.");
  else { refresh(); setInterval(refresh, 10000); }
})();
