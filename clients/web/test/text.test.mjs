import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { alertOf, pickCue } from "../src/cue.js";
import { displayOrder, pageParams, pickLang, wsUrl } from "../src/page.js";
import {
  DASH, STRINGS, agoText, fill, formatClock, formatInt, formatPercent, formatVelocity, nextBatch, platformName,
} from "../src/text.js";

const loc = (href) => new URL(href);

describe("page URL", () => {
  test("room, language, token, background and SKU filter come from the URL", () => {
    const p = pageParams(loc("http://gw:8765/overlay/live-1?lang=zh&bg=transparent&sku=a,b"));
    assert.equal(p.page, "overlay");
    assert.equal(p.room, "live-1");
    assert.equal(p.lang, "zh");
    assert.equal(p.transparent, true);
    assert.deepEqual([...p.skus], ["a", "b"]);
    assert.equal(p.token, "");
    const h = pageParams(loc("https://example.com/screens/host/live-1?token=abc.def"), ["en-GB"]);
    assert.equal(h.prefix, "/screens");
    assert.equal(h.token, "abc.def");
    assert.equal(h.skus, null);
  });

  test("the language defaults to the browser's", () => {
    assert.equal(pickLang(null, ["zh-CN", "en"]), "zh");
    assert.equal(pickLang("", ["zh-TW"]), "zh");
    assert.equal(pickLang(null, ["fr-FR", "zh-CN"]), "en");
    assert.equal(pickLang(null, []), "en");
    assert.equal(pickLang("EN", ["zh-CN"]), "en");
    assert.equal(pickLang("de", ["zh-CN"]), "zh");
  });

  test("SKUs show in SKU order, or in the order ?sku= names them", () => {
    assert.deepEqual(displayOrder(["tee-10", "cap", "tee-9"]), ["cap", "tee-9", "tee-10"]);
    assert.deepEqual(displayOrder(["a", "b", "c"], new Set(["c", "x", "a"])), ["c", "a"]);
  });

  test("the WebSocket URL is on the page's own host", () => {
    const viewer = loc("http://127.0.0.1:8765/overlay/demo");
    assert.equal(wsUrl(viewer, pageParams(viewer)), "ws://127.0.0.1:8765/ws/demo");
    const host = loc("https://live.example/p/host/r1?token=t%2B1");
    assert.equal(wsUrl(host, pageParams(host), "host"), "wss://live.example/p/ws/r1?role=host&token=t%2B1");
  });
});

describe("formatting", () => {
  test("numbers", () => {
    assert.equal(formatInt(1234567), "1,234,567");
    assert.equal(formatInt(undefined), DASH);
    assert.equal(formatVelocity(0), "0");
    assert.equal(formatVelocity(4.26), "4.3");
    assert.equal(formatVelocity(12345.6), "12,346");
    assert.equal(formatVelocity(null), DASH);
  });

  test("durations and countdowns", () => {
    assert.equal(formatClock(45), "0:45");
    assert.equal(formatClock(754), "12:34");
    assert.equal(formatClock(3725), "1:02:05");
    assert.equal(formatClock(-3), "0:00");
    assert.equal(formatClock(undefined), DASH);
  });

  test("percent of the initial quantity", () => {
    assert.equal(formatPercent(460, 1000), "46%");
    assert.equal(formatPercent(3, 1000), "<1%");
    assert.equal(formatPercent(0, 1000), "0%");
    assert.equal(formatPercent(5, undefined), DASH);
    assert.equal(formatPercent(5, 0), DASH);
  });

  test("freshness in both languages", () => {
    assert.equal(agoText(400, "en"), "0.4 s");
    assert.equal(fill(STRINGS.en.updated, { ago: agoText(400, "en") }), "updated 0.4 s ago");
    assert.equal(fill(STRINGS.zh.updated, { ago: agoText(12_500, "zh") }), "12 秒前更新");
    assert.equal(agoText(600_000, "en"), "10 min");
    assert.equal(agoText(null, "en"), DASH);
  });

  test("platform names", () => {
    assert.equal(platformName("douyin", "zh"), "抖音");
    assert.equal(platformName("kuaishou", "en"), "Kuaishou");
    assert.equal(platformName("shop-7", "en"), "shop-7");
  });
});

describe("next batch", () => {
  const item = { sku: "s", qty: 5, ver: 1, batches: [{ at: 3000, qty: 20 }, { at: 2000, qty: 10 }, { at: 500, qty: 1 }] };

  test("the first batch still ahead, from the item when there are no stats", () => {
    assert.deepEqual(nextBatch(item, undefined, 1000), { at: 2000, qty: 10 });
    assert.deepEqual(nextBatch(item, undefined, 2500), { at: 3000, qty: 20 });
    assert.equal(nextBatch(item, undefined, 3000), null);
    assert.equal(nextBatch({ sku: "x", qty: 1, ver: 1 }, undefined, 0), null);
  });

  test("the gateway's next_batch while it is still ahead", () => {
    assert.deepEqual(nextBatch(item, { vel: 1, next_batch: { at: 1500, qty: 7 } }, 1000), { at: 1500, qty: 7 });
    assert.deepEqual(nextBatch(item, { vel: 1, next_batch: { at: 1500, qty: 7 } }, 1600), { at: 2000, qty: 10 });
  });
});

describe("the host's cue", () => {
  const it = (sku, qty, alert, extra = {}) => [sku, { sku, qty, ver: 1, alert, initial: 100, name: sku.toUpperCase(), ...extra }];

  test("the alert falls back to st for items without one", () => {
    assert.equal(alertOf({ qty: 0, st: "out" }), "out");
    assert.equal(alertOf({ qty: 5, st: "low" }), "low");
    assert.equal(alertOf({ qty: 5, st: "ok", alert: "critical" }), "critical");
  });

  test("priority: last call, batch, release, low, fastest, sold out, calm", () => {
    const stats = { skus: { a: { vel: 30 }, b: { vel: 90 } } };
    const now = 10_000;
    const all = [
      it("a", 50, "ok"), it("b", 60, "ok"), it("z", 90, "ok"),
      it("o", 0, "out"),
      it("l", 15, "low"),
      it("r", 0, "out", { reserve: 40 }),
      it("n", 70, "ok", { batches: [{ at: now + 30_000, qty: 25 }] }),
      it("c", 3, "critical"),
    ];
    const kinds = [];
    let rows = all;
    for (;;) {
      const cue = pickCue(rows, stats, now, "en");
      kinds.push([cue.kind, cue.sku]);
      if (cue.kind === "calm") break;
      rows = rows.filter(([sku]) => sku !== cue.sku);
      if (cue.kind === "fastest") rows = rows.filter(([sku]) => sku !== "a");
    }
    assert.deepEqual(kinds, [
      ["critical", "c"], ["batch", "n"], ["release", "r"], ["low", "l"], ["fastest", "b"], ["out", "o"], ["calm", null],
    ]);
    assert.equal(pickCue([], null, now, "en"), null);
  });

  test("the cue reads well in both languages", () => {
    const now = 0;
    assert.equal(pickCue([it("lip", 3, "critical")], null, now, "en").text, "Last call! LIP: only 3 left");
    assert.equal(pickCue([it("lip", 3, "critical")], null, now, "zh").text, "最后机会！LIP 仅剩 3 件");
    const batch = it("shoe", 80, "ok", { batches: [{ at: 65_000, qty: 50 }] });
    assert.equal(pickCue([batch], null, now, "en").text, "Next batch of SHOE in 1:05: 50 more");
    assert.equal(pickCue([batch], null, now, "zh").text, "SHOE 下一批 1:05 后开抢，50 件");
    const far = it("shoe", 80, "ok", { batches: [{ at: 600_000, qty: 50 }] });
    assert.equal(pickCue([far], null, now, "en").kind, "calm");
  });
});
