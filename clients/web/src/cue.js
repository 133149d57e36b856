// "What to say next": the one line at the top of the host screen.

import { STRINGS, fill, formatClock, formatInt, formatPercent, formatVelocity, nextBatch } from "./text.js";

/** Seconds ahead within which an upcoming batch becomes the cue. */
export const BATCH_CUE_S = 120;

export function alertOf(item) {
  if (["ok", "low", "critical", "out"].includes(item.alert)) return item.alert;
  if (item.st === "out" || item.qty <= 0) return "out";
  return item.st === "low" ? "low" : "ok";
}

const ratio = (item) => (item.initial > 0 ? item.qty / item.initial : Infinity);

/**
 * The most useful prompt for the host right now, by priority: a last call, a
 * batch about to open, a sell-out with reserve to release, a low SKU, the
 * fastest seller, a sell-out; else "all in stock". Null for an empty room.
 */
export function pickCue(items, stats, nowMs, lang = "en") {
  const T = STRINGS[lang].cue;
  const rows = [...items].map(([sku, item]) => ({
    sku, item, alert: alertOf(item), name: item.name || sku,
    s: (stats && stats.skus && stats.skus[sku]) || null,
  }));
  if (rows.length === 0) return null;
  const n = (v) => formatInt(v, lang);
  const best = (list, key) => list.reduce((a, b) => (key(b) < key(a) ? b : a));

  const critical = rows.filter((r) => r.alert === "critical");
  if (critical.length) {
    const r = best(critical, (x) => x.item.qty);
    return { kind: "critical", sku: r.sku, text: fill(T.critical, { name: r.name, qty: n(r.item.qty) }) };
  }
  const batches = rows
    .map((r) => ({ r, b: nextBatch(r.item, r.s, nowMs) }))
    .filter(({ b }) => b !== null && b.at - nowMs <= BATCH_CUE_S * 1000);
  if (batches.length) {
    const { r, b } = best(batches, (x) => x.b.at);
    return {
      kind: "batch", sku: r.sku,
      text: fill(T.batch, { name: r.name, t: formatClock((b.at - nowMs) / 1000), qty: n(b.qty) }),
    };
  }
  const release = rows.filter((r) => r.alert === "out" && r.item.reserve > 0);
  if (release.length) {
    const r = best(release, (x) => -x.item.reserve);
    return { kind: "release", sku: r.sku, text: fill(T.release, { name: r.name, reserve: n(r.item.reserve) }) };
  }
  const low = rows.filter((r) => r.alert === "low");
  if (low.length) {
    const r = best(low, (x) => ratio(x.item));
    return {
      kind: "low", sku: r.sku,
      text: fill(T.low, { name: r.name, qty: n(r.item.qty), pct: formatPercent(r.item.qty, r.item.initial) }),
    };
  }
  const selling = rows.filter((r) => r.alert !== "out" && r.s && r.s.vel > 0);
  if (selling.length) {
    const r = best(selling, (x) => -x.s.vel);
    return { kind: "fastest", sku: r.sku, text: fill(T.fastest, { name: r.name, vel: formatVelocity(r.s.vel, lang) }) };
  }
  const out = rows.find((r) => r.alert === "out");
  if (out) return { kind: "out", sku: out.sku, text: fill(T.out, { name: out.name }) };
  return { kind: "calm", sku: null, text: T.calm };
}
