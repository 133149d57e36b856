import assert from "node:assert/strict";
import { beforeEach, describe, test } from "node:test";

import { Connection, ServerClock } from "../src/protocol.js";
import { TokenSource, fetchToken, parseTokenResponse, renewDelay, tokenExpiry } from "../src/token.js";
import { FakeTimers, FakeWebSocket } from "./fakes.mjs";

/** An unsigned JWT-shaped token: the page only reads `exp`, the gateway verifies. */
const jwt = (claims) => {
  const part = (obj) => Buffer.from(JSON.stringify(obj)).toString("base64url");
  return `${part({ alg: "HS256", typ: "JWT" })}.${part(claims)}.c2ln`;
};
const flush = () => new Promise((resolve) => setImmediate(resolve));
const snapshot = { t: "snapshot", room: "r", epoch: "e", seq: 1, ts: 0, items: [] };

describe("tokenExpiry", () => {
  test("reads exp (seconds) as milliseconds, base64url included", () => {
    assert.equal(tokenExpiry(jwt({ exp: 1_700_000_000, rooms: ["ü?>"] })), 1_700_000_000_000);
  });

  test("no exp, not a JWT, or junk: null", () => {
    assert.equal(tokenExpiry(jwt({ role: "host" })), null);
    assert.equal(tokenExpiry("abc"), null);
    assert.equal(tokenExpiry("a.!!!.c"), null);
    assert.equal(tokenExpiry(undefined), null);
  });
});

describe("renewDelay", () => {
  test("an hour's token is renewed 30 s early", () => {
    assert.equal(renewDelay(3_600_000, 0), 3_570_000);
  });

  test("a short token a fifth of its life early, never less than 1 s", () => {
    assert.equal(renewDelay(10_000, 0), 8_000);
    assert.equal(renewDelay(3_000, 0), 2_000);
    assert.equal(renewDelay(500, 0), 0);
  });
});

describe("parseTokenResponse", () => {
  test("JSON with a token, or the token as text", () => {
    assert.equal(parseTokenResponse('{"token": "t1", "expires_in": 60}'), "t1");
    assert.equal(parseTokenResponse("  t2\n"), "t2");
  });

  test("anything else is an error, not a token", () => {
    assert.throws(() => parseTokenResponse('{"error": "login"}'), /without a token/);
    assert.throws(() => parseTokenResponse(""), /nothing/);
  });
});

describe("fetchToken", () => {
  test("sends the page's cookies, bypasses the cache, refuses an error status", async () => {
    const calls = [];
    const ok = fetchToken("/token", async (url, init) => {
      calls.push([url, init]);
      return { ok: true, status: 200, text: async () => '{"token":"fresh"}' };
    });
    assert.equal(await ok(), "fresh");
    assert.deepEqual(calls, [["/token", { credentials: "include", cache: "no-store" }]]);
    const denied = fetchToken("/token", async () => ({ ok: false, status: 401, text: async () => "" }));
    await assert.rejects(denied(), /answered 401/);
  });
});

describe("TokenSource", () => {
  test("without a fetcher nothing is stale and nothing is fetched", async () => {
    const tokens = new TokenSource(jwt({ exp: 1 }));
    assert.equal(tokens.renewable, false);
    assert.equal(tokens.stale(10_000_000), false);
    assert.equal(await tokens.refresh(), tokens.token);
  });

  test("stale when missing or about to expire; concurrent refreshes share one fetch", async () => {
    let fetches = 0;
    const tokens = new TokenSource("", async () => jwt({ exp: 100 + fetches++ }));
    assert.equal(tokens.stale(0), true);
    const [a, b] = await Promise.all([tokens.refresh(), tokens.refresh()]);
    assert.equal(fetches, 1);
    assert.equal(a, b);
    assert.equal(tokens.stale(50_000), false);
    assert.equal(tokens.stale(98_500), true, "within the 2 s slack");
  });
});

describe("Connection with a renewable token", () => {
  let timers;
  let fetched;
  let answer;
  const open = () => {
    const tokens = new TokenSource(jwt({ exp: 10 }), async () => {
      fetched += 1;
      return answer();
    });
    const conn = new Connection(() => `ws://gw/ws/r?token=${tokens.token}`, {
      WebSocket: FakeWebSocket, timers, random: () => 0.5, tokens, clock: new ServerClock(() => timers.t),
    });
    conn.start();
    return { conn, tokens };
  };

  beforeEach(() => {
    FakeWebSocket.reset();
    timers = new FakeTimers();
    fetched = 0;
    answer = () => jwt({ exp: 20 + fetched });
  });

  test("renews over the open connection before expiry, then again after the gateway's answer", async () => {
    const { tokens } = open();
    const ws = FakeWebSocket.last();
    ws.accept();
    ws.receive(snapshot);
    timers.advance(7_999);
    assert.equal(fetched, 0);
    timers.advance(1); // 10 s token: renewed 2 s early
    await flush();
    assert.equal(fetched, 1);
    assert.deepEqual(ws.sent.at(-1), { t: "auth", token: tokens.token });
    ws.receive({ t: "auth", exp: 21 });
    timers.advance(10_000); // the new token (exp 21 s) is renewed at 21 − 2.6 s
    assert.equal(fetched, 1);
    timers.advance(1_000);
    await flush();
    assert.equal(fetched, 2);
    assert.equal(FakeWebSocket.instances.length, 1, "never reconnected");
  });

  test("a failed fetch is retried while the connection lasts", async () => {
    open();
    const ws = FakeWebSocket.last();
    ws.accept();
    ws.receive(snapshot);
    answer = () => {
      throw new Error("backend down");
    };
    timers.advance(8_000);
    await flush();
    assert.equal(fetched, 1);
    assert.equal(ws.sent.length, 0);
    timers.advance(2_000);
    await flush();
    assert.equal(fetched, 2);
  });

  test("4401 is not fatal: fetch a new token, reconnect with it", async () => {
    const { conn, tokens } = open();
    let ws = FakeWebSocket.last();
    ws.accept();
    ws.receive(snapshot);
    ws.drop(4401, "token expired");
    assert.equal(conn.status.conn, "down");
    timers.advance(timers.retryDelay());
    await flush();
    assert.equal(fetched, 1);
    ws = FakeWebSocket.last();
    assert.equal(FakeWebSocket.instances.length, 2);
    assert.equal(ws.url, `ws://gw/ws/r?token=${tokens.token}`);
    ws.accept();
    ws.receive(snapshot);
    assert.equal(conn.status.conn, "up");
  });

  test("an expired token is refreshed before connecting, not offered to the gateway", async () => {
    timers.t = 60_000; // the page's token (exp 10 s) is long gone
    const { tokens } = open();
    assert.equal(FakeWebSocket.instances.length, 0);
    await flush();
    assert.equal(fetched, 1);
    assert.equal(FakeWebSocket.last().url, `ws://gw/ws/r?token=${tokens.token}`);
  });

  test("without a token URL, 4401 stays fatal", () => {
    const conn = new Connection("ws://gw/ws/r", {
      WebSocket: FakeWebSocket, timers, tokens: new TokenSource(jwt({ exp: 10 })),
    });
    conn.start();
    FakeWebSocket.last().accept();
    FakeWebSocket.last().drop(4401, "token expired");
    assert.equal(conn.status.conn, "fatal");
  });
});
