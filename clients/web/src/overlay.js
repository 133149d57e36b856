// The viewer overlay: one badge per SKU over the live video.
//
// Built for a low-end phone or an OBS browser source: no framework, one DOM
// node tree per SKU created once, text nodes touched only when their value
// changes, and all DOM work batched into one requestAnimationFrame.

import { Connection } from "./protocol.js";
import { displayOrder, pageParams, wsUrl } from "./page.js";
import { fetchToken, TokenSource } from "./token.js";
import { STRINGS, fill, formatInt } from "./text.js";

const languages = navigator.languages && navigator.languages.length ? navigator.languages : [navigator.language];
const params = pageParams(location, languages);
const T = STRINGS[params.lang];
const root = document.documentElement;
root.lang = params.lang === "zh" ? "zh-CN" : "en";
root.classList.toggle("transparent", params.transparent);
const list = document.getElementById("badges");
const reducedMotion = matchMedia("(prefers-reduced-motion: reduce)");

/** sku → {el, name, pre, n, post, flash, qty, st, restocks} */
const badges = new Map();
const dirty = new Set();
let frameRequested = false;
let reorder = false; // set when SKUs come or go
let connection = null;

// "{n} left" → ["", " left"]: the number gets its own element for emphasis.
function split(template) {
  const at = template.indexOf("{n}");
  return at < 0 ? [template, "", false] : [template.slice(0, at), template.slice(at + 3), true];
}
const TEMPLATES = { ok: split(T.left), low: split(T.onlyLeft), out: split(T.soldOut) };

function makeBadge(sku) {
  const el = document.createElement("div");
  el.className = "badge";
  el.dataset.sku = sku;
  el.dataset.restocks = "0";
  el.innerHTML =
    '<span class="mark" aria-hidden="true"></span>' +
    '<span class="body"><span class="name"></span>' +
    '<span class="count"><span class="pre"></span><b class="n"></b><span class="post"></span></span></span>' +
    '<span class="flash" aria-hidden="true"></span>';
  const q = (sel) => el.querySelector(sel);
  return {
    el, name: q(".name"), pre: q(".pre"), n: q(".n"), post: q(".post"), flash: q(".flash"),
    qty: null, st: null, label: null, restocks: 0,
  };
}

function setText(node, text) {
  if (node.textContent !== text) node.textContent = text;
}

function statusOf(item) {
  if (item.st === "out" || item.qty <= 0) return "out";
  return item.st === "low" ? "low" : "ok";
}

function restock(b, before) {
  b.restocks += 1;
  b.el.dataset.restocks = String(b.restocks);
  b.flash.textContent = before.st === "out" ? T.backInStock : fill(T.restocked, { n: formatInt(b.qty - before.qty, params.lang) });
  if (typeof b.el.animate !== "function") return;
  // Transform and opacity only: the compositor runs these without layout.
  if (!reducedMotion.matches) {
    b.el.animate(
      [{ transform: "scale(1)" }, { transform: "scale(1.08)", offset: 0.25 }, { transform: "scale(1)" }],
      { duration: 700, easing: "cubic-bezier(.2,.8,.2,1)" },
    );
  }
  const lift = reducedMotion.matches ? ["0", "0", "0"] : ["40%", "-10%", "-60%"];
  b.flash.animate(
    [
      { opacity: 0, transform: `translateY(${lift[0]})` },
      { opacity: 1, transform: `translateY(${lift[1]})`, offset: 0.15 },
      { opacity: 1, transform: `translateY(${lift[1]})`, offset: 0.8 },
      { opacity: 0, transform: `translateY(${lift[2]})` },
    ],
    { duration: 2200, easing: "ease-out" },
  );
  b.el.classList.add("restocking");
  clearTimeout(b.restockTimer);
  b.restockTimer = setTimeout(() => b.el.classList.remove("restocking"), 2200);
}

function renderSku(sku, item) {
  let b = badges.get(sku);
  if (item === undefined) {
    if (b !== undefined) {
      b.el.remove();
      badges.delete(sku);
    }
    return;
  }
  if (b === undefined) {
    b = makeBadge(sku);
    badges.set(sku, b);
    list.appendChild(b.el);
    reorder = true;
  }
  const st = statusOf(item);
  const before = { qty: b.qty, st: b.st };
  const label = item.name || sku;
  if (b.label !== label) {
    b.label = label;
    setText(b.name, label);
  }
  if (b.st !== st) {
    b.st = st;
    b.el.dataset.st = st;
    const [pre, post, withNumber] = TEMPLATES[st];
    setText(b.pre, pre);
    setText(b.post, post);
    b.n.hidden = !withNumber;
  }
  if (b.qty !== item.qty) {
    b.qty = item.qty;
    b.el.dataset.qty = String(item.qty);
    setText(b.n, formatInt(item.qty, params.lang));
  }
  if (before.qty !== null && item.qty > before.qty) restock(b, before);
}

function render() {
  frameRequested = false;
  const items = connection.state.items;
  for (const sku of dirty) renderSku(sku, params.skus && !params.skus.has(sku) ? undefined : items.get(sku));
  dirty.clear();
  if (!reorder) return;
  reorder = false;
  let expected = list.firstElementChild;
  for (const sku of displayOrder(badges.keys(), params.skus)) {
    const b = badges.get(sku);
    if (b.el !== expected) list.insertBefore(b.el, expected);
    else expected = expected.nextElementSibling;
  }
}

function schedule() {
  if (!frameRequested) {
    frameRequested = true;
    requestAnimationFrame(render);
  }
}

const tokens = new TokenSource(params.token, params.tokenUrl ? fetchToken(params.tokenUrl) : null);
connection = new Connection(() => wsUrl(location, { ...params, token: tokens.token }), {
  tokens,
  onChange(result) {
    for (const sku of result.changed) dirty.add(sku);
    for (const sku of result.removed) dirty.add(sku);
    if (result.kind === "snapshot") for (const sku of badges.keys()) dirty.add(sku);
    if (dirty.size) schedule();
  },
  onStatus(status) {
    root.dataset.conn = status.conn;
  },
  // Viewers are many: ping only after 30 s of silence (the gateway also pings every 20 s).
  idlePingMs: 30_000,
  deadAfterMs: 15_000,
});
root.dataset.conn = "connecting";
connection.start();
window.stockwire = connection; // for debugging from the console
