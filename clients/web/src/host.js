// The host teleprompter: a full-screen board read from three metres away.
//
// Frames update the room state at once; the DOM is brought up to date in one
// requestAnimationFrame pass, which also runs four times a second for the
// clock-driven parts (freshness, countdowns). Every write is skipped when the
// text or attribute already holds the value, so a pass costs almost nothing.

import { alertOf, pickCue } from "./cue.js";
import { Connection } from "./protocol.js";
import { displayOrder, pageParams, wsUrl } from "./page.js";
import { fetchToken, TokenSource } from "./token.js";
import {
  DASH, STRINGS, agoText, fill, formatClock, formatInt, formatPercent, formatVelocity, nextBatch, platformName,
} from "./text.js";

const languages = navigator.languages && navigator.languages.length ? navigator.languages : [navigator.language];
const params = pageParams(location, languages);
const lang = params.lang;
const T = STRINGS[lang];
const root = document.documentElement;
root.lang = lang === "zh" ? "zh-CN" : "en";
document.title = `stockwire · ${params.room}`;

const $ = (id) => document.getElementById(id);
const grid = $("grid");
const els = {
  room: $("room"), viewers: $("viewers"), viewersLabel: $("viewers-label"), freshness: $("freshness"),
  freshnessText: $("freshness-text"), clock: $("clock"), cue: $("cue"), cueText: $("cue-text"), notice: $("notice"),
};
els.room.textContent = params.room;
els.viewersLabel.textContent = T.watching;

const ICONS = {
  ok: '<svg viewBox="0 0 24 24"><path d="M4 12.5l5 5L20 6.5" fill="none" stroke="currentColor" stroke-width="3.2" stroke-linecap="round" stroke-linejoin="round"/></svg>',
  low: '<svg viewBox="0 0 24 24"><path d="M12 3L22.5 21H1.5z" fill="currentColor"/><path d="M12 9.5v5.5M12 17.6v.4" stroke="#fbbf24" stroke-width="2.4" stroke-linecap="round"/></svg>',
  critical: '<svg viewBox="0 0 24 24"><path d="M8 2h8l6 6v8l-6 6H8l-6-6V8z" fill="currentColor"/><path d="M12 6.5v7M12 17v.5" stroke="#ff3b3b" stroke-width="2.8" stroke-linecap="round"/></svg>',
  out: '<svg viewBox="0 0 24 24"><circle cx="12" cy="12" r="9.5" fill="none" stroke="currentColor" stroke-width="3"/><path d="M5.5 18.5l13-13" stroke="currentColor" stroke-width="3"/></svg>',
};

function setText(node, text) {
  if (node.textContent !== text) node.textContent = text;
}
function setAttr(node, name, value) {
  if (node.getAttribute(name) !== value) node.setAttribute(name, value);
}

const CARD_HTML = `
<header class="card-head">
  <h2 class="name"></h2>
  <div class="alert" role="status"><span class="alert-icon" aria-hidden="true"></span><span class="alert-label"></span></div>
</header>
<div class="middle">
  <div class="stock">
    <div class="qty"><span class="num"></span><span class="initial"></span></div>
    <div class="pct"></div>
  </div>
  <div class="bar" aria-hidden="true"><div class="fill"></div><div class="safety"></div></div>
  <div class="platforms"></div>
</div>
<dl class="facts">
  <div class="fact vel"><dt>${T.velocity}</dt><dd><span class="v"></span><small>${T.perMinute}</small></dd></div>
  <div class="fact eta"><dt>${T.eta}</dt><dd><span class="v"></span></dd></div>
  <div class="fact batch"><dt>${T.nextBatch}</dt><dd><span class="v"></span><small class="q"></small></dd></div>
  <div class="fact reserve"><dt>${T.reserve}</dt><dd><span class="v"></span></dd></div>
</dl>`;

/** sku → card */
const cards = new Map();

function makeCard(sku) {
  const el = document.createElement("article");
  el.className = "card";
  el.dataset.sku = sku;
  el.innerHTML = CARD_HTML;
  const q = (sel) => el.querySelector(sel);
  return {
    el, sku,
    name: q(".name"), alert: q(".alert"), alertIcon: q(".alert-icon"), alertLabel: q(".alert-label"),
    num: q(".num"), initial: q(".initial"), pct: q(".pct"), fill: q(".fill"), safety: q(".safety"),
    platforms: q(".platforms"), pf: new Map(), pfKeys: "",
    vel: q(".vel .v"), velFact: q(".vel"), eta: q(".eta .v"), etaFact: q(".eta"),
    batch: q(".batch .v"), batchQty: q(".batch .q"), batchFact: q(".batch"),
    reserve: q(".reserve .v"), reserveFact: q(".reserve"),
    alertShown: null, share: null, safetyShown: undefined,
  };
}

// Well-known platforms first, each always in its own colour; others after, by name.
const PLATFORM_ORDER = ["douyin", "kuaishou", "taobao", "jd", "pdd", "xiaohongshu"];
const platformRank = (key) => {
  const i = PLATFORM_ORDER.indexOf(key);
  return i < 0 ? PLATFORM_ORDER.length : i;
};
function platformColour(key) {
  const i = PLATFORM_ORDER.indexOf(key);
  if (i >= 0) return i % 6;
  let h = 0;
  for (const ch of key) h = (h * 31 + ch.charCodeAt(0)) >>> 0;
  return h % 6;
}

function renderPlatforms(card, platforms) {
  const entries = platforms && typeof platforms === "object" && !Array.isArray(platforms)
    ? Object.entries(platforms).filter((e) => Number.isFinite(e[1])) : [];
  entries.sort((a, b) => platformRank(a[0]) - platformRank(b[0]) || (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
  const keys = entries.map((e) => e[0]).join("\u0000");
  if (keys !== card.pfKeys) {
    card.pfKeys = keys;
    card.platforms.textContent = "";
    card.pf.clear();
    for (const [key] of entries) {
      const chip = document.createElement("span");
      chip.className = "pf";
      chip.dataset.platform = key;
      chip.style.setProperty("--pf", `var(--pf-${platformColour(key)})`);
      chip.innerHTML = '<i aria-hidden="true"></i><span class="pf-name"></span><b class="pf-qty"></b>';
      chip.querySelector(".pf-name").textContent = platformName(key, lang);
      card.platforms.appendChild(chip);
      card.pf.set(key, chip.querySelector(".pf-qty"));
    }
    card.platforms.hidden = entries.length === 0;
  }
  for (const [key, v] of entries) setText(card.pf.get(key), formatInt(v, lang));
}

function renderCard(card, item, skuStats, serverNow) {
  const alert = alertOf(item);
  setAttr(card.el, "data-alert", alert);
  setAttr(card.el, "data-qty", String(item.qty));
  if (card.alertShown !== alert) {
    card.alertShown = alert;
    card.alertIcon.innerHTML = ICONS[alert];
    setText(card.alertLabel, T.alert[alert]);
  }
  setText(card.name, item.name || card.sku);
  setText(card.num, formatInt(item.qty, lang));
  setText(card.initial, Number.isFinite(item.initial) ? `/ ${formatInt(item.initial, lang)}` : "");
  setText(card.pct, formatPercent(item.qty, item.initial));
  const share = item.initial > 0 ? Math.min(1, item.qty / item.initial) : item.qty > 0 ? 1 : 0;
  if (card.share !== share) {
    card.share = share;
    card.fill.style.transform = `scaleX(${share})`; // compositor-only, eased by CSS
  }
  // The tick marks this SKU's safety line, or the gateway's default (0.2).
  const safety = item.initial > 0 ? (Number.isFinite(item.safety) ? item.safety : 0.2) : null;
  if (card.safetyShown !== safety) {
    card.safetyShown = safety;
    card.safety.hidden = safety === null;
    if (safety !== null) card.safety.style.left = `${safety * 100}%`;
  }
  renderPlatforms(card, item.platforms);

  // Pacing numbers come from the gateway's stats frame; "—" until one arrives.
  const vel = skuStats && Number.isFinite(skuStats.vel) ? skuStats.vel : null;
  setText(card.vel, vel === null ? DASH : formatVelocity(vel, lang));
  setAttr(card.velFact, "data-empty", String(vel === null));
  const eta = skuStats && Number.isFinite(skuStats.eta) && alert !== "out" ? skuStats.eta : null;
  setText(card.eta, eta === null ? DASH : formatClock(eta));
  setAttr(card.etaFact, "data-empty", String(eta === null));
  setAttr(card.etaFact, "data-soon", String(eta !== null && eta < 60));

  const batch = nextBatch(item, skuStats, serverNow);
  const inS = batch ? (batch.at - serverNow) / 1000 : null;
  setText(card.batch, batch ? formatClock(Math.ceil(inS)) : DASH);
  setText(card.batchQty, batch ? `+${formatInt(batch.qty, lang)}` : "");
  setAttr(card.batchFact, "data-empty", String(!batch));
  setAttr(card.batchFact, "data-soon", String(batch !== null && inS <= 60));

  const reserve = Number.isFinite(item.reserve) ? item.reserve : null;
  setText(card.reserve, reserve === null ? DASH : formatInt(reserve, lang));
  setAttr(card.reserveFact, "data-empty", String(reserve === null));
  setAttr(card.reserveFact, "data-soon", String(alert === "out" && reserve > 0));
}

// -- layout: as many columns as make the cards largest ---------------------------------

let layoutKey = "";
function layout(count) {
  // The window, less the header and the cue: close enough, and reading it forces no layout.
  const w = window.innerWidth;
  const h = window.innerHeight * 0.8;
  const key = `${count}:${w}x${h}`;
  if (key === layoutKey) return;
  layoutKey = key;
  let best = { cols: 1, rows: 1, score: -1 };
  for (let cols = 1; cols <= Math.max(1, count); cols++) {
    const rows = Math.ceil(Math.max(1, count) / cols);
    const cw = w / cols;
    const ch = h / rows;
    const score = Math.min(cw / 2.1, ch); // the card reads best around 2.1 : 1
    if (score > best.score) best = { cols, rows, score };
  }
  grid.style.setProperty("--cols", String(best.cols));
  grid.style.setProperty("--rows", String(best.rows));
}
window.addEventListener("resize", () => schedule());

// -- the header: viewers, freshness, clock ------------------------------------------

function renderHeader(status, stats, nowLocal) {
  setText(els.viewers, stats && Number.isFinite(stats.viewers) ? formatInt(stats.viewers, lang) : DASH);
  const last = status.lastFrameAt;
  const age = last === null ? null : nowLocal - last;
  let state;
  let text;
  if (status.conn === "up") {
    state = age !== null && age > 5000 ? "stale" : "live";
    text = fill(T.updated, { ago: agoText(age, lang) });
  } else if (status.conn === "fatal") {
    state = "down";
    text = T.offline;
  } else if (status.conn === "connecting" && last === null) {
    state = "connecting";
    text = T.connecting;
  } else {
    state = "down";
    const parts = [T.offline];
    if (status.retryAt !== null && status.conn === "down") {
      const s = Math.max(0, Math.ceil((status.retryAt - nowLocal) / 1000));
      parts.push(s > 0 ? fill(T.retryIn, { s }) : T.retrying);
    } else {
      parts.push(T.retrying);
    }
    if (age !== null) parts.push(fill(T.lastUpdate, { ago: agoText(age, lang) }));
    text = parts.join(" · ");
  }
  setAttr(els.freshness, "data-state", state);
  setText(els.freshnessText, text);
  const d = new Date();
  setText(els.clock, [d.getHours(), d.getMinutes(), d.getSeconds()].map((x) => String(x).padStart(2, "0")).join(":"));
}

function renderNotice(status, count) {
  let text = "";
  if (status.conn === "fatal") text = fill(T.fatal, { reason: status.reason || status.code });
  else if (!params.token && !params.tokenUrl && status.conn !== "up") text = T.needsToken;
  else if (status.conn === "up" && count === 0) text = fill(T.waiting, { room: params.room });
  setText(els.notice, text);
  els.notice.hidden = text === "";
}

// -- one pass --------------------------------------------------------------------------

let frameRequested = false;
let connection = null;

function render() {
  frameRequested = false;
  const state = connection.state;
  const stats = state.stats;
  const serverNow = connection.clock.now();
  const visible = displayOrder(state.items.keys(), params.skus).map((sku) => [sku, state.items.get(sku)]);

  const shown = new Set(visible.map(([sku]) => sku));
  for (const [sku, card] of cards) {
    if (!shown.has(sku)) {
      card.el.remove();
      cards.delete(sku);
    }
  }
  let expected = grid.firstElementChild;
  for (const [sku, item] of visible) {
    let card = cards.get(sku);
    if (card === undefined) {
      card = makeCard(sku);
      cards.set(sku, card);
    }
    if (card.el !== expected) grid.insertBefore(card.el, expected);
    else expected = expected.nextElementSibling;
    renderCard(card, item, stats && stats.skus ? stats.skus[sku] : undefined, serverNow);
  }
  layout(visible.length);

  const cue = pickCue(visible, stats, serverNow, lang);
  setAttr(els.cue, "data-kind", cue ? cue.kind : "none");
  setText(els.cueText, cue ? cue.text : "");
  renderHeader(connection.status, stats, performance.now());
  renderNotice(connection.status, visible.length);
  setAttr(root, "data-conn", connection.status.conn);
}

function schedule() {
  if (!frameRequested && connection !== null) {
    frameRequested = true;
    requestAnimationFrame(render);
  }
}

const tokens = new TokenSource(params.token, params.tokenUrl ? fetchToken(params.tokenUrl) : null);
connection = new Connection(() => wsUrl(location, { ...params, token: tokens.token }, "host"), {
  tokens,
  onChange: schedule,
  onStatus: schedule,
  // Hosts get a stats frame every second; a silent gateway is noticed fast.
  idlePingMs: 3_000,
  deadAfterMs: 5_000,
});
connection.start();
setInterval(schedule, 250);
schedule();
window.stockwire = connection; // for debugging from the console
