import assert from "node:assert/strict";
import { beforeEach, describe, test } from "node:test";

import { Connection, RoomState, ServerClock, backoffDelay, decodeFrame, encodeFrame } from "../src/protocol.js";
import { FakeTimers, FakeWebSocket } from "./fakes.mjs";

const item = (sku, qty, ver, extra = {}) => ({ sku, qty, ver, st: qty > 0 ? "ok" : "out", ts: 1, ...extra });
const snapshot = (seq, items, epoch = "e1") => ({ t: "snapshot", room: "r", epoch, seq, ts: 1000, items });
const update = (seq, items) => ({ t: "update", room: "r", seq, ts: 1000, items });
const qtys = (state) => Object.fromEntries([...state.items].map(([sku, it]) => [sku, it.qty]));

describe("msgpack", () => {
  test("frames round-trip through @msgpack/msgpack", () => {
    const frame = update(7, [item("口红-520", 3, 9, { platforms: { douyin: 2 } })]);
    assert.deepEqual(decodeFrame(encodeFrame(frame)), frame);
  });
});

describe("backoffDelay", () => {
  test("full jitter: anywhere from 0 up to the exponential ceiling", () => {
    assert.equal(backoffDelay(0, 250, 10_000, () => 0), 0);
    assert.equal(backoffDelay(0, 250, 10_000, () => 0.5), 125);
    assert.equal(backoffDelay(3, 250, 10_000, () => 0.5), 1000);
    for (let attempt = 0; attempt < 12; attempt++) {
      const ceiling = Math.min(10_000, 250 * 2 ** attempt);
      assert.ok(backoffDelay(attempt, 250, 10_000, () => 0.999999) < ceiling);
    }
  });

  test("the cap holds however many attempts failed", () => {
    assert.equal(backoffDelay(1000, 250, 10_000, () => 0.5), 5000);
  });
});

describe("RoomState", () => {
  test("a snapshot of another epoch replaces the state, even with lower versions", () => {
    const s = new RoomState();
    s.apply(snapshot(5, [item("a", 10, 50), item("b", 5, 40)]));
    const r = s.apply(snapshot(1, [item("a", 99, 1)], "e2"));
    assert.deepEqual(qtys(s), { a: 99 });
    assert.deepEqual([...r.changed], ["a"]);
    assert.deepEqual([...r.removed], ["b"]);
    assert.equal(s.seq, 1);
    assert.equal(s.epoch, "e2");
  });

  test("a snapshot of the same epoch keeps the newer record and drops SKUs it lacks", () => {
    const s = new RoomState();
    s.apply(snapshot(5, [item("a", 10, 50), item("b", 5, 40), item("c", 1, 1)]));
    const r = s.apply(snapshot(3, [item("a", 12, 48), item("b", 4, 41)]));
    assert.deepEqual(qtys(s), { a: 10, b: 4 });
    assert.deepEqual([...r.changed], ["b"]);
    assert.deepEqual([...r.removed], ["c"]);
    assert.equal(s.seq, 3, "the snapshot's seq is the current sequence");
  });

  test("display order survives a snapshot; new SKUs go last", () => {
    const s = new RoomState();
    s.apply(snapshot(1, [item("a", 1, 1), item("b", 1, 1)]));
    s.apply(snapshot(2, [item("c", 1, 1), item("b", 2, 2), item("a", 2, 2)], "e2"));
    assert.deepEqual([...s.items.keys()], ["a", "b", "c"]);
  });

  test("updates apply only items with a newer version", () => {
    const s = new RoomState();
    s.apply(snapshot(1, [item("a", 10, 5)]));
    const r = s.apply(update(2, [item("a", 9, 5), item("a", 8, 4), item("b", 3, 1)]));
    assert.deepEqual(qtys(s), { a: 10, b: 3 });
    assert.deepEqual([...r.changed], ["b"]);
    s.apply(update(3, [item("a", 7, 6)]));
    assert.deepEqual(qtys(s), { a: 7, b: 3 });
    assert.equal(s.seq, 3);
  });

  test("a sequence gap is reported, and the items still apply", () => {
    const s = new RoomState();
    s.apply(snapshot(10, [item("a", 10, 1)]));
    assert.equal(s.apply(update(11, [item("a", 9, 2)])).gap, false);
    const r = s.apply(update(14, [item("a", 5, 6)]));
    assert.equal(r.gap, true);
    assert.deepEqual(qtys(s), { a: 5 });
    assert.equal(s.seq, 14);
    assert.equal(s.apply(update(15, [])).gap, false);
  });

  test("a repeated or older update is harmless and does not move seq back", () => {
    const s = new RoomState();
    s.apply(snapshot(10, [item("a", 10, 3)]));
    const r = s.apply(update(9, [item("a", 11, 2)]));
    assert.equal(r.gap, false);
    assert.equal(s.seq, 10);
    assert.deepEqual(qtys(s), { a: 10 });
  });

  test("a viewer update keeps the name its snapshot gave; everything else is replaced", () => {
    const s = new RoomState();
    s.apply(snapshot(1, [item("a", 10, 1, { name: "T-shirt" }), item("b", 5, 1)]));
    s.apply(update(2, [item("a", 9, 2), item("b", 4, 2)]));
    assert.equal(s.items.get("a").name, "T-shirt");
    assert.equal(s.items.get("a").qty, 9);
    assert.equal("name" in s.items.get("b"), false, "no name was ever given");
    s.apply(update(3, [item("a", 8, 3, { name: "Tee", reserve: 5 })]));
    assert.equal(s.items.get("a").name, "Tee", "a host item's name wins");
    s.apply(update(4, [item("a", 7, 4)]));
    assert.deepEqual(s.items.get("a"), item("a", 7, 4, { name: "Tee" }), "reserve is not carried over");
  });

  test("a snapshot of another epoch takes its names as they are", () => {
    const s = new RoomState();
    s.apply(snapshot(1, [item("a", 10, 5, { name: "T-shirt" })]));
    s.apply(snapshot(1, [item("a", 10, 1)], "e2"));
    assert.equal(s.items.get("a").name, undefined);
  });

  test("an update before any snapshot asks for one", () => {
    const s = new RoomState();
    assert.equal(s.apply(update(4, [item("a", 1, 1)])).gap, true);
  });

  test("stats replace the previous stats and leave the sequence alone", () => {
    const s = new RoomState();
    s.apply(snapshot(10, [item("a", 10, 1)]));
    const r = s.apply({ t: "stats", room: "r", ts: 5, viewers: 3, skus: { a: { vel: 12.5, eta: 48 } } });
    assert.equal(r.kind, "stats");
    assert.equal(r.gap, false);
    assert.equal(s.seq, 10);
    assert.equal(s.stats.viewers, 3);
    assert.equal(s.stats.skus.a.vel, 12.5);
    s.apply({ t: "stats", room: "r", ts: 6, viewers: 4, skus: {} });
    assert.deepEqual(s.stats.skus, {});
    assert.equal(s.apply(update(11, [])).gap, false);
  });

  test("junk is ignored", () => {
    const s = new RoomState();
    s.apply(snapshot(1, [item("a", 1, 1), { sku: "bad" }, null]));
    assert.deepEqual(qtys(s), { a: 1 });
    assert.equal(s.apply("nope").kind, undefined);
    assert.equal(s.apply({ t: "pong", id: 1 }).changed.size, 0);
  });
});

describe("ServerClock", () => {
  test("the offset is the largest recent ts − now sample", () => {
    let now = 1000;
    const clock = new ServerClock(() => now, 3);
    clock.observe(5000); // transit 0: offset 4000
    now = 2000;
    clock.observe(5900); // 100 ms late: 3900
    assert.equal(clock.offset, 4000);
    assert.equal(clock.now(), 6000);
    clock.observe(5950);
    clock.observe(5980);
    assert.equal(clock.offset, 3980, "old samples age out");
  });
});

describe("Connection", () => {
  let timers;
  let changes;
  let statuses;
  const open = (options = {}) => {
    const conn = new Connection("ws://gw/ws/r", {
      WebSocket: FakeWebSocket, timers, random: () => 0.5,
      onChange: (r) => changes.push(r), onStatus: (s) => statuses.push(s), ...options,
    });
    conn.start();
    return conn;
  };

  beforeEach(() => {
    FakeWebSocket.reset();
    timers = new FakeTimers();
    changes = [];
    statuses = [];
  });

  test("goes up on the snapshot and follows updates", () => {
    const conn = open();
    const ws = FakeWebSocket.last();
    assert.equal(ws.url, "ws://gw/ws/r");
    assert.equal(ws.binaryType, "arraybuffer");
    ws.accept();
    assert.equal(conn.status.conn, "connecting");
    ws.receive(snapshot(1, [item("a", 10, 1)]));
    assert.equal(conn.status.conn, "up");
    ws.receive(update(2, [item("a", 9, 2)]));
    assert.deepEqual(qtys(conn.state), { a: 9 });
    assert.deepEqual(changes.map((c) => c.kind), ["snapshot", "update"]);
    assert.deepEqual(ws.sent, []);
  });

  test("a seq gap sends one msgpack resync until the snapshot arrives", () => {
    const conn = open();
    const ws = FakeWebSocket.last();
    ws.accept();
    ws.receive(snapshot(1, [item("a", 10, 1)]));
    ws.receive(update(3, [item("a", 8, 3)]));
    ws.receive(update(5, [item("a", 7, 4)]));
    assert.deepEqual(ws.sent, [{ t: "resync" }]);
    ws.receive(snapshot(5, [item("a", 7, 4)]));
    ws.receive(update(7, [item("a", 6, 5)]));
    assert.deepEqual(ws.sent, [{ t: "resync" }, { t: "resync" }]);
    assert.deepEqual(qtys(conn.state), { a: 6 });
  });

  test("an unanswered resync is repeated, but not faster than every 3 s", () => {
    open();
    const ws = FakeWebSocket.last();
    ws.accept();
    ws.receive(snapshot(1, [item("a", 10, 1)]));
    ws.receive(update(3, []));
    timers.advance(2000);
    ws.receive(update(5, []));
    assert.equal(ws.sent.length, 1);
    timers.advance(1000);
    ws.receive(update(7, []));
    assert.equal(ws.sent.length, 2);
  });

  test("stats never trigger a resync", () => {
    const conn = open();
    const ws = FakeWebSocket.last();
    ws.accept();
    ws.receive(snapshot(4, [item("a", 10, 1)]));
    ws.receive({ t: "stats", room: "r", ts: 1, viewers: 2, skus: {} });
    ws.receive(update(5, [item("a", 9, 2)]));
    assert.deepEqual(ws.sent, []);
    assert.equal(conn.state.stats.viewers, 2);
  });

  test("reconnects with growing jittered backoff, then resyncs from the snapshot", () => {
    const conn = open({ backoffBase: 100, backoffCap: 1000 });
    let ws = FakeWebSocket.last();
    ws.accept();
    ws.receive(snapshot(1, [item("a", 10, 1), item("b", 1, 1)]));
    ws.drop(1006);
    assert.equal(conn.status.conn, "down");
    const delays = [];
    for (let i = 0; i < 6; i++) {
      delays.push(timers.retryDelay());
      timers.advance(timers.retryDelay());
      FakeWebSocket.last().drop(1006); // the gateway is still down
    }
    assert.deepEqual(delays, [50, 100, 200, 400, 500, 500]); // random 0.5 × min(cap, base × 2^n)
    timers.advance(timers.retryDelay());
    ws = FakeWebSocket.last();
    assert.equal(FakeWebSocket.instances.length, 8);
    ws.accept();
    ws.receive(snapshot(1, [item("a", 3, 1)], "e2"));
    assert.equal(conn.status.conn, "up");
    assert.equal(conn.status.attempt, 0, "a snapshot resets the backoff");
    assert.deepEqual(qtys(conn.state), { a: 3 });
    ws.drop(1012, "service restart");
    assert.equal(timers.retryDelay(), 50);
  });

  test("a close code that retrying cannot fix stops retrying", () => {
    const conn = open();
    const ws = FakeWebSocket.last();
    ws.accept();
    ws.drop(4401, "token expired");
    assert.equal(conn.status.conn, "fatal");
    assert.equal(conn.status.reason, "token expired");
    assert.equal([...timers.pending.values()].filter((t) => t.every === null).length, 0);
  });

  test("a silent gateway is pinged, and dropped when it does not answer", () => {
    const conn = open({ idlePingMs: 3000, deadAfterMs: 5000 });
    const ws = FakeWebSocket.last();
    ws.accept();
    ws.receive(snapshot(1, [item("a", 10, 1)]));
    timers.advance(3000);
    assert.equal(ws.sent.length, 1);
    assert.equal(ws.sent[0].t, "ping");
    ws.receive({ t: "pong", id: ws.sent[0].id });
    timers.advance(2000);
    assert.equal(ws.sent.length, 1, "the pong counts as life");
    timers.advance(1000);
    assert.equal(ws.sent.length, 2);
    timers.advance(5000);
    assert.equal(conn.status.conn, "down");
    assert.deepEqual(ws.closedWith, [4000, "no answer"]);
    timers.advance(timers.retryDelay());
    assert.equal(FakeWebSocket.instances.length, 2);
  });

  test("stop closes the socket and schedules nothing", () => {
    const conn = open();
    const ws = FakeWebSocket.last();
    ws.accept();
    conn.stop();
    assert.deepEqual(ws.closedWith, [1000, "page closed"]);
    assert.equal(timers.pending.size, 0);
  });
});
