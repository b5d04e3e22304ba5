// The annotation page of `python -m alignprop.annotate`. Plain browser JavaScript, no
// libraries, nothing from the network but this server: works offline in Chromium and
// Firefox. A choice counts as saved only when the server answered 200, which it does
// after the choice is on disk (fsync).
"use strict";
(function () {
  const NAME_KEY = "alignprop-annotate.name";
  const TAB_KEY = "alignprop-annotate.tab";
  const el = (id) => document.getElementById(id);
  const body = document.body;

  // crypto.randomUUID needs a secure context; getRandomValues works on any address.
  function randomId() {
    const bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function store(kind) {
    try { return window[kind]; } catch (e) { return null; }   // storage may be disabled
  }
  const local = store("localStorage");
  const session = store("sessionStorage");

  // One id per tab (kept across reloads of that tab): the server hands each tab its own pair.
  let tab = (session && session.getItem(TAB_KEY)) || randomId();
  if (session) session.setItem(TAB_KEY, tab);
  let name = (local && local.getItem(NAME_KEY)) || "";

  let state = null;      // the last state the server sent
  let shown = null;      // the pair on screen: {id, order, ...}
  let busy = false;      // a request is in flight: ignore further presses
  let pending = null;    // an unconfirmed choice, retried with the same event id
  let pendingUndo = null;
  let renderToken = 0;

  function setStatus(text, kind) {
    const s = el("status");
    s.textContent = text;
    s.className = kind || "";
  }

  function setNotice(text) {
    const n = el("notice");
    n.textContent = text || "";
    n.hidden = !text;
  }

  function enableChoices(on) {
    document.querySelectorAll("[data-choice]").forEach((b) => { b.disabled = !on; });
  }

  function showPanel(which) {
    el("name-panel").hidden = which !== "name";
    el("pair-panel").hidden = which !== "pair";
    el("done-panel").hidden = which !== "done";
  }

  async function request(method, url, payload) {
    const opts = { method: method, headers: { "Accept": "application/json" }, cache: "no-store" };
    if (payload !== undefined) {
      opts.headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(payload);
    }
    const res = await fetch(url, opts);
    let data = {};
    try { data = await res.json(); } catch (e) { /* not JSON: keep {} */ }
    return { status: res.status, data: data || {} };
  }

  function loadImage(url, alt, id) {
    return new Promise((resolve) => {
      const img = new Image();
      img.alt = alt;
      img.id = id;
      img.onload = () => {
        if (img.naturalWidth < 256) img.classList.add("small");
        resolve(img);
      };
      img.onerror = () => resolve(null);
      img.src = url;
    });
  }

  async function loadState() {
    const q = new URLSearchParams({ annotator: name, tab: tab });
    try {
      const r = await request("GET", "/api/state?" + q.toString());
      if (r.status !== 200) throw new Error(r.data.error || ("HTTP " + r.status));
      await render(r.data);
    } catch (e) {
      setStatus("The server is not answering (" + e.message + "); reload once it runs again.",
                "error");
    }
  }

  async function render(s) {
    state = s;
    const token = ++renderToken;
    el("progress-text").textContent = s.done + " of " + s.total + " pairs judged";
    el("progress-bar").style.width = (100 * s.done / Math.max(1, s.total)) + "%";
    el("undo").disabled = !s.last;
    el("who").hidden = false;
    el("who-name").textContent = name;
    if (!s.pair) {
      shown = null;
      body.dataset.pair = "";
      body.dataset.ready = "1";
      showPanel("done");
      return;
    }
    const p = s.pair;
    if (shown && shown.id === p.id && shown.order.join() === p.order.join()) {
      body.dataset.ready = "1";
      showPanel("pair");
      enableChoices(true);
      return;
    }
    // Never show one pair's instruction with another pair's images: hide until all three
    // images of the new pair have loaded, then swap them in together.
    body.dataset.ready = "0";
    enableChoices(false);
    showPanel("pair");
    const imgs = await Promise.all([
      loadImage(p.input, "the input photo", "img-input"),
      loadImage(p.left, "left edit", "img-left"),
      loadImage(p.right, "right edit", "img-right"),
    ]);
    if (token !== renderToken) return;   // a newer state arrived meanwhile
    ["img-input", "img-left", "img-right"].forEach((id, k) => {
      const fresh = imgs[k] || Object.assign(new Image(), { id: id, alt: "(could not load)" });
      el(id).replaceWith(fresh);
    });
    el("prompt").textContent = p.prompt;
    el("pair-id").textContent = "pair " + p.id + " (" + p.position + " of " + s.total + ")";
    setNotice(p.open_elsewhere ? "This pair is also open in another tab; the first answer counts."
                               : "");
    if (imgs.some((i) => !i)) {
      setStatus("An image of pair " + p.id + " could not be loaded; press S to skip it.", "error");
    }
    shown = p;
    body.dataset.pair = p.id;
    body.dataset.ready = "1";
    enableChoices(true);
  }

  async function choose(which) {
    if (busy || !shown || body.dataset.ready !== "1") return;
    busy = true;
    enableChoices(false);
    if (!pending || pending.pair !== shown.id || pending.choice !== which) {
      pending = { pair: shown.id, choice: which, event: randomId() };
    }
    const pairId = shown.id;
    setStatus("Saving…", "");
    try {
      const r = await request("POST", "/api/choice", {
        event: pending.event, annotator: name, tab: tab, pair: pairId, order: shown.order,
        choice: which,
      });
      if (r.status === 200) {
        pending = null;
        setStatus(which === "skip" ? "Saved: pair " + pairId + " skipped"
                                   : "Saved: " + which + " edit of pair " + pairId, "ok");
        await render(r.data.state);
      } else if (r.status === 409) {
        pending = null;
        setStatus(r.data.error + "; here is the next pair.", "warn");
        await render(r.data.state);
      } else {
        setStatus("Not saved: " + (r.data.error || ("HTTP " + r.status)) + ". Press again to retry.",
                  "error");
      }
    } catch (e) {
      setStatus("Not saved: the server is not answering. Press again once it runs.", "error");
    } finally {
      busy = false;
      enableChoices(body.dataset.ready === "1" && !!shown);
    }
  }

  async function undo() {
    if (busy || !state || !state.last) return;
    busy = true;
    if (!pendingUndo || pendingUndo.undoes !== state.last.event) {
      pendingUndo = { undoes: state.last.event, event: randomId() };
    }
    setStatus("Undoing…", "");
    try {
      const r = await request("POST", "/api/undo", {
        event: pendingUndo.event, annotator: name, tab: tab, undoes: pendingUndo.undoes,
      });
      if (r.status === 200) {
        pendingUndo = null;
        setStatus("Undone: pair " + (r.data.pair || state.last.pair) + " is back", "ok");
        await render(r.data.state);
      } else if (r.status === 409) {
        pendingUndo = null;
        setStatus(r.data.error, "warn");
        await render(r.data.state);
      } else {
        setStatus("Not undone: " + (r.data.error || ("HTTP " + r.status)), "error");
      }
    } catch (e) {
      setStatus("Not undone: the server is not answering.", "error");
    } finally {
      busy = false;
    }
  }

  function askName() {
    el("name-input").value = name;
    showPanel("name");
    el("name-input").focus();
  }

  el("name-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const typed = el("name-input").value.trim();
    if (!typed) return;
    name = typed.slice(0, 64);
    if (local) local.setItem(NAME_KEY, name);
    shown = null;
    loadState();
  });
  el("change-name").addEventListener("click", askName);
  el("undo").addEventListener("click", undo);
  document.querySelectorAll("[data-choice]").forEach((b) => {
    b.addEventListener("click", () => choose(b.dataset.choice));
  });
  document.addEventListener("keydown", (e) => {
    if (!el("name-panel").hidden) return;
    const t = e.target;
    if (t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA")) return;
    const key = (e.key || "").toLowerCase();
    if ((e.ctrlKey || e.metaKey) && key === "z") { e.preventDefault(); undo(); return; }
    if (e.ctrlKey || e.metaKey || e.altKey || e.repeat) return;
    if (key === "1") choose("left");
    else if (key === "2") choose("right");
    else if (key === "s") choose("skip");
    else if (key === "u" || key === "backspace") undo();
    else return;
    e.preventDefault();
  });

  if (name) loadState(); else askName();
})();
