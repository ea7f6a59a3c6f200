// Shared by both pages. Model text only ever goes into the page through textContent.
"use strict";

const tether = (() => {
  function readToken() {
    const m = /(?:^|[#&])token=([A-Za-z0-9_-]+)/.exec(location.hash);
    if (m) {
      sessionStorage.setItem("tether-token", m[1]);
      history.replaceState(null, "", location.pathname); // keep the token out of the address bar
      return m[1];
    }
    return sessionStorage.getItem("tether-token");
  }
  const token = readToken();

  async function api(method, path, body) {
    const init = { method, headers: { Authorization: "Bearer " + token } };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const resp = await fetch(path, init);
    let data = null;
    try { data = await resp.json(); } catch (e) { data = { error: "unreadable answer" }; }
    return { status: resp.status, data };
  }

  function el(tag, text, cls) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (cls) node.className = cls;
    return node;
  }

  function showError(message) {
    const box = document.getElementById("error");
    box.textContent = message;
    box.hidden = !message;
  }

  function promptText(prompt) {
    if (typeof prompt === "string") return prompt;
    return prompt.map((m) => m.role + ": " + m.content).join("\n\n");
  }

  function newKey() {
    const bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  return { token, api, el, showError, promptText, newKey };
})();
