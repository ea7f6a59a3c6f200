"use strict";

(() => {
  const { api, el, showError, promptText, newKey } = tether;
  const $ = (id) => document.getElementById(id);
  let current = null;   // the item on screen
  let choice = null;    // pairwise: left | right | tie | both_bad
  let order = [];       // ranking: shown positions, best first
  let key = null;       // idempotency key of the judgement on screen (kept across retries)
  let saving = false;
  let saved = 0;

  function status(text) { $("status").textContent = text; }

  async function load() {
    if (!tether.token) { showError("No access token: open the private link you were given."); return; }
    const me = await api("GET", "/api/me");
    if (me.status !== 200) { showError(me.data.error || "cannot sign in"); return; }
    $("who").textContent = me.data.name;
    await next();
  }

  async function next() {
    const r = await api("POST", "/api/next");
    if (r.status !== 200) { showError(r.data.error || "cannot fetch the next item"); return; }
    showError("");
    current = r.data; choice = null; order = []; key = newKey();
    for (const id of ["pair", "ranking", "done", "prompt-box"]) $(id).hidden = true;
    if (current.item === null) { $("done").hidden = false; return; }
    $("prompt-box").hidden = false;
    $("prompt").textContent = promptText(current.prompt);
    if (current.task === "pairwise") showPair(); else showRanking();
  }

  function showPair() {
    $("pair").hidden = false;
    $("left").querySelector(".text").textContent = current.completions[0];
    $("right").querySelector(".text").textContent = current.completions[1];
    $("reason").value = "";
    const s = current.suggestion;
    $("suggestion").hidden = !s;
    if (s) {
      const pick = s.side === "left" ? "A" : s.side === "right" ? "B" : "neither (a tie)";
      $("suggestion").textContent = "AI suggestion (" + (s.judge || "judge") + "): " + pick + ", P(A better) = " + s.p_left.toFixed(2);
    }
    markPair();
  }

  function markPair() {
    for (const b of document.querySelectorAll("[data-choice]")) b.classList.toggle("chosen", b.dataset.choice === choice);
    $("left").classList.toggle("chosen", choice === "left");
    $("right").classList.toggle("chosen", choice === "right");
    $("save-pair").disabled = choice === null || saving;
  }

  function showRanking() {
    $("ranking").hidden = false;
    $("rank-reason").value = "";
    const box = $("candidates");
    box.replaceChildren();
    current.completions.forEach((text, pos) => {
      const card = el("article", undefined, "card");
      const head = el("h3");
      head.append(el("kbd", pos + 1), " ", el("span", "", "rank"));
      card.append(head, el("div", text, "text"));
      card.addEventListener("click", () => pick(pos));
      box.append(card);
    });
    markRanking();
  }

  function markRanking() {
    const cards = $("candidates").children;
    for (let pos = 0; pos < cards.length; pos++) {
      const rank = order.indexOf(pos);
      cards[pos].querySelector(".rank").textContent = rank >= 0 ? "ranked #" + (rank + 1) : "";
      cards[pos].classList.toggle("chosen", rank >= 0);
    }
    $("save-rank").disabled = order.length !== current.completions.length || saving;
  }

  function pick(pos) {
    if (pos < current.completions.length && !order.includes(pos)) order.push(pos);
    markRanking();
  }

  async function save() {
    if (saving || !current || current.item === null) return;
    const body = { item: current.item, idempotency_key: key };
    if (current.task === "pairwise") {
      if (choice === null) return;
      body.choice = choice; body.reason = $("reason").value;
    } else {
      if (order.length !== current.completions.length) return;
      body.ranking = order; body.reason = $("rank-reason").value;
    }
    saving = true; status("saving…");
    for (let attempt = 0; attempt < 5; attempt++) {
      let r;
      try { r = await api("POST", "/api/judgements", body); } catch (e) { r = null; } // network: retry, same key
      if (r && (r.status === 200 || r.status === 201)) {
        saved += 1; saving = false;
        $("count").textContent = saved + " saved";
        status("saved");
        await next();
        return;
      }
      if (r && r.status >= 400 && r.status < 500) { saving = false; showError(r.data.error); status(""); await next(); return; }
      await new Promise((ok) => setTimeout(ok, 500 * (attempt + 1)));
    }
    saving = false; status("not saved: the server does not answer; press Enter to try again");
  }

  document.querySelectorAll("[data-choice]").forEach((b) => b.addEventListener("click", () => { choice = b.dataset.choice; markPair(); }));
  $("save-pair").addEventListener("click", save);
  $("save-rank").addEventListener("click", save);

  document.addEventListener("keydown", (ev) => {
    if (!current || current.item === null) return;
    const typing = ev.target instanceof HTMLTextAreaElement;
    if (typing) {
      if (ev.key === "Escape") ev.target.blur();
      else if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) { ev.preventDefault(); save(); }
      return;
    }
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
    if (ev.key === "Enter") { ev.preventDefault(); save(); return; }
    if (ev.key === "r") { ev.preventDefault(); $(current.task === "pairwise" ? "reason" : "rank-reason").focus(); return; }
    if (current.task === "pairwise") {
      const map = { "1": "left", a: "left", ArrowLeft: "left", "2": "right", b: "right", ArrowRight: "right", t: "tie", x: "both_bad" };
      if (map[ev.key]) { ev.preventDefault(); choice = map[ev.key]; markPair(); }
    } else {
      if (/^[1-9]$/.test(ev.key)) { ev.preventDefault(); pick(Number(ev.key) - 1); }
      else if (ev.key === "Backspace") { ev.preventDefault(); order.pop(); markRanking(); }
    }
  });

  load();
})();
