// The screens' side of docs/protocol.md, shared by the overlay and the host page:
// room state with the version rule, the sequence check, and a connection that
// reconnects with exponential backoff and full jitter and resyncs from the snapshot.
//
// Nothing here touches the DOM, so Node's test runner exercises it as it is
// (clients/web/test/protocol.test.mjs) with a fake WebSocket and fake timers.

import { Decoder, Encoder } from "@msgpack/msgpack";
import { renewDelay } from "./token.js";

const decoder = new Decoder();
const encoder = new Encoder();

export const decodeFrame = (data) => decoder.decode(data instanceof ArrayBuffer ? new Uint8Array(data) : data);
export const encodeFrame = (frame) => encoder.encode(frame);

/** Close codes after which retrying unchanged cannot help (protocol §9). */
export const FATAL_CLOSES = new Map([
  [1009, "frame too big"],
  [4400, "bad request"],
  [4401, "token expired or invalid"],
  [4403, "token does not open this room"],
  [4404, "invalid room name"],
]);

/** Full jitter: a random wait in [0, min(cap, base × 2^attempt)). */
export function backoffDelay(attempt, base = 250, cap = 10_000, random = Math.random) {
  return random() * Math.min(cap, base * 2 ** Math.min(attempt, 30));
}

const isMap = (v) => v !== null && typeof v === "object" && !Array.isArray(v) && !(v instanceof Uint8Array);
const isItem = (v) => isMap(v) && typeof v.sku === "string" && Number.isFinite(v.ver) && Number.isFinite(v.qty);

/**
 * Fields that viewer updates leave out because the snapshot already gave them
 * (protocol §6: viewer snapshots add `name`, updates stay minimal). An update
 * is the SKU's whole state otherwise, so only these are carried over from the
 * held item; host items always repeat them, and a publisher can rename but
 * never unname, so carrying one over never resurrects a removed value.
 */
const SNAPSHOT_FIELDS = ["name"];

function withSnapshotFields(item, held) {
  if (held === undefined) return item;
  let merged = item;
  for (const key of SNAPSHOT_FIELDS) {
    if (merged[key] === undefined && held[key] !== undefined) {
      if (merged === item) merged = { ...item };
      merged[key] = held[key];
    }
  }
  return merged;
}

/**
 * One room as the screen knows it: items by SKU (version rule), the frame
 * sequence, the data epoch, and the latest host stats.
 *
 * `apply(frame)` returns what changed: `{kind, changed: Set, removed: Set, gap}`;
 * `gap` is true when frames were missed and a resync is due.
 */
export class RoomState {
  constructor() {
    /** @type {Map<string, object>} insertion order is display order, kept across snapshots */
    this.items = new Map();
    this.seq = null;
    this.epoch = null;
    this.stats = null;
  }

  apply(frame) {
    const result = { kind: isMap(frame) ? frame.t : undefined, changed: new Set(), removed: new Set(), gap: false };
    if (result.kind === "snapshot") this._snapshot(frame, result);
    else if (result.kind === "update") this._update(frame, result);
    else if (result.kind === "stats") this._stats(frame, result);
    return result;
  }

  _snapshot(frame, result) {
    const items = Array.isArray(frame.items) ? frame.items.filter(isItem) : [];
    const epoch = typeof frame.epoch === "string" ? frame.epoch : "";
    // Same data epoch: a node we reconnected to may be a little behind, so keep
    // whichever record is newer. Another epoch: the data started over, take it all.
    const merge = this.seq !== null && epoch === this.epoch;
    const present = new Set();
    for (const item of items) {
      present.add(item.sku);
      const held = this.items.get(item.sku);
      if (merge && held !== undefined && held.ver >= item.ver) continue;
      this.items.set(item.sku, item);
      result.changed.add(item.sku);
    }
    for (const sku of [...this.items.keys()]) {
      if (!present.has(sku)) {
        this.items.delete(sku);
        result.removed.add(sku);
      }
    }
    this.epoch = epoch;
    this.seq = Number.isFinite(frame.seq) ? frame.seq : 0;
  }

  _update(frame, result) {
    if (this.seq === null) {
      result.gap = true; // an update before any snapshot: ask for one
    } else if (Number.isFinite(frame.seq)) {
      if (frame.seq > this.seq + 1) result.gap = true;
      if (frame.seq > this.seq) this.seq = frame.seq;
    }
    for (const item of Array.isArray(frame.items) ? frame.items : []) {
      if (!isItem(item)) continue;
      const held = this.items.get(item.sku);
      if (held !== undefined && item.ver <= held.ver) continue;
      this.items.set(item.sku, withSnapshotFields(item, held));
      result.changed.add(item.sku);
    }
  }

  _stats(frame, result) {
    // Stats carry no seq: each one replaces the previous and the sequence is untouched.
    this.stats = {
      ts: Number.isFinite(frame.ts) ? frame.ts : null,
      viewers: Number.isFinite(frame.viewers) ? frame.viewers : null,
      skus: isMap(frame.skus) ? frame.skus : {},
    };
    for (const sku of Object.keys(this.stats.skus)) result.changed.add(sku);
  }
}

/**
 * The gateway's clock as seen from here. Frames carry the time they were built
 * (`ts`); they arrive after it, so `ts - now` underestimates the offset by the
 * transit time and the largest recent sample is the best estimate.
 */
export class ServerClock {
  constructor(now = () => Date.now(), samples = 20) {
    this._now = now;
    this._max = samples;
    this._samples = [];
    this.offset = 0;
  }

  observe(ts) {
    if (!Number.isFinite(ts)) return;
    this._samples.push(ts - this._now());
    if (this._samples.length > this._max) this._samples.shift();
    this.offset = Math.max(...this._samples);
  }

  now() {
    return this._now() + this.offset;
  }
}

const defaultTimers = {
  setTimeout: (fn, ms) => globalThis.setTimeout(fn, ms),
  clearTimeout: (id) => globalThis.clearTimeout(id),
  setInterval: (fn, ms) => globalThis.setInterval(fn, ms),
  clearInterval: (id) => globalThis.clearInterval(id),
  now: () => (globalThis.performance ? globalThis.performance.now() : Date.now()),
};

/**
 * One room's connection: keeps `state` whole across disconnects.
 *
 * Status (`onStatus`): `{conn, attempt, retryAt, lastFrameAt, code, reason}` where
 * `conn` is `connecting` (socket opening or waiting for the snapshot), `up`
 * (snapshot received, frames flowing), `down` (waiting to retry) or `fatal`
 * (a close code that retrying cannot fix; see FATAL_CLOSES).
 *
 * `url` is a string, or a function called at every (re)connect so the URL can
 * carry the current token. With a renewable `tokens` (a TokenSource), the token
 * is renewed over the open connection before it expires (`auth`, protocol
 * §5.3), a stale token is refreshed before connecting, and 4401 means "fetch a
 * new token and reconnect" rather than a dead end.
 */
export class Connection {
  constructor(url, {
    onChange = () => {},
    onStatus = () => {},
    WebSocket: WebSocketImpl = globalThis.WebSocket,
    timers = defaultTimers,
    random = Math.random,
    clock = new ServerClock(),
    backoffBase = 250,
    backoffCap = 10_000,
    idlePingMs = 15_000,
    deadAfterMs = 10_000,
    resyncEveryMs = 3_000,
    tokens = null,
    renewRetryMs = 2_000,
  } = {}) {
    this.url = url;
    this.tokens = tokens;
    this.renewRetryMs = renewRetryMs;
    this._renew = null;
    this._refreshFirst = false;
    this.state = new RoomState();
    this.clock = clock;
    this.onChange = onChange;
    this.onStatus = onStatus;
    this.WebSocket = WebSocketImpl;
    this.timers = timers;
    this.random = random;
    this.backoffBase = backoffBase;
    this.backoffCap = backoffCap;
    this.idlePingMs = idlePingMs;
    this.deadAfterMs = deadAfterMs;
    this.resyncEveryMs = resyncEveryMs;
    this.status = { conn: "connecting", attempt: 0, retryAt: null, lastFrameAt: null, code: null, reason: "" };
    this.ws = null;
    this._retry = null;
    this._watch = null;
    this._pingSentAt = null;
    this._pingId = 0;
    this._resyncSentAt = null;
    this._stopped = true;
  }

  start() {
    if (!this._stopped) return;
    this._stopped = false;
    this._watch = this.timers.setInterval(() => this._checkAlive(), 1000);
    this._open();
  }

  stop() {
    this._stopped = true;
    if (this._retry !== null) this.timers.clearTimeout(this._retry);
    if (this._watch !== null) this.timers.clearInterval(this._watch);
    this._retry = this._watch = null;
    this._cancelRenew();
    this._detach(1000, "page closed");
  }

  send(frame) {
    if (this.ws !== null && this.ws.readyState === 1) {
      this.ws.send(encodeFrame(frame));
      return true;
    }
    return false;
  }

  _setStatus(patch) {
    Object.assign(this.status, patch);
    this.onStatus({ ...this.status });
  }

  _open() {
    this._retry = null;
    const tokens = this.tokens;
    if (tokens !== null && tokens.renewable && (this._refreshFirst || tokens.stale(this.clock.now()))) {
      this._setStatus({ conn: "connecting", retryAt: null });
      tokens.refresh().then(
        () => {
          this._refreshFirst = false;
          if (!this._stopped && this.ws === null && this._retry === null) this._connect();
        },
        (err) => {
          if (!this._stopped && this.ws === null && this._retry === null) {
            this._lost(4401, `token refresh failed: ${err && err.message ? err.message : err}`);
          }
        },
      );
      return;
    }
    this._connect();
  }

  _connect() {
    let ws;
    try {
      ws = new this.WebSocket(typeof this.url === "function" ? this.url() : this.url);
    } catch (err) {
      this._lost(1006, String(err && err.message ? err.message : err));
      return;
    }
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    this._pingSentAt = null;
    this._resyncSentAt = null;
    ws.onmessage = (event) => this._message(event.data);
    ws.onclose = (event) => {
      if (this.ws === ws) {
        this.ws = null;
        this._lost(event.code, event.reason || "");
      }
    };
    ws.onerror = () => {}; // a close event always follows
    this._setStatus({ conn: "connecting", retryAt: null });
  }

  _message(data) {
    let frame;
    try {
      frame = decodeFrame(data);
    } catch {
      return; // not msgpack: ignore, as for an unknown frame type
    }
    this.status.lastFrameAt = this.timers.now();
    this._pingSentAt = null;
    if (isMap(frame) && frame.t !== "pong" && frame.t !== "auth") this.clock.observe(frame.ts);
    const result = this.state.apply(frame);
    if (isMap(frame) && frame.t === "auth") this._scheduleRenew();
    if (result.kind === "snapshot") {
      this._resyncSentAt = null;
      if (this.status.conn !== "up") this._scheduleRenew();
      this._setStatus({ conn: "up", attempt: 0, code: null, reason: "" });
    } else if (this.status.conn !== "up" && result.kind === "update") {
      this._setStatus({ conn: "up" });
    }
    if (result.gap) this._resync();
    if (result.kind === "snapshot" || result.kind === "update" || result.kind === "stats") {
      this.onChange(result, this.state);
    }
  }

  /** Renew before the token expires: at `renewDelay`, or `renewRetryMs` after a failed fetch. */
  _scheduleRenew(delay = null) {
    this._cancelRenew();
    const tokens = this.tokens;
    if (tokens === null || !tokens.renewable) return;
    if (delay === null) {
      const exp = tokens.expiresAt;
      if (exp === null) return; // a token without exp never needs renewing
      delay = renewDelay(exp, this.clock.now());
    }
    this._renew = this.timers.setTimeout(() => this._renewNow(), delay);
  }

  _renewNow() {
    this._renew = null;
    const ws = this.ws;
    this.tokens.refresh().then(
      (token) => {
        // The gateway answers with an `auth` frame, which schedules the next renewal.
        if (this.ws === ws && !this._stopped) this.send({ t: "auth", token });
      },
      () => {
        // Keep trying until the gateway closes with 4401; the reconnect fetches again.
        if (this.ws === ws && !this._stopped) this._scheduleRenew(this.renewRetryMs);
      },
    );
  }

  _cancelRenew() {
    if (this._renew !== null) this.timers.clearTimeout(this._renew);
    this._renew = null;
  }

  _resync() {
    const now = this.timers.now();
    if (this._resyncSentAt !== null && now - this._resyncSentAt < this.resyncEveryMs) return;
    if (this.send({ t: "resync" })) this._resyncSentAt = now;
  }

  _checkAlive() {
    if (this.ws === null || this.ws.readyState !== 1) return;
    const now = this.timers.now();
    const last = this.status.lastFrameAt ?? now;
    if (this._pingSentAt !== null) {
      if (now - this._pingSentAt >= this.deadAfterMs) {
        // No answer at all: the path is dead even if the socket has not noticed.
        this._detach(4000, "no answer");
        this._lost(1006, "no answer from the gateway");
      }
    } else if (now - last >= this.idlePingMs) {
      this._pingId = (this._pingId + 1) % 1_000_000;
      if (this.send({ t: "ping", id: this._pingId })) this._pingSentAt = now;
    }
  }

  _detach(code, reason) {
    this._cancelRenew();
    const ws = this.ws;
    this.ws = null;
    if (ws === null) return;
    ws.onmessage = ws.onclose = ws.onerror = null;
    try {
      ws.close(code, reason);
    } catch {
      // already closed
    }
  }

  _lost(code, reason) {
    this._cancelRenew();
    if (this._stopped) return;
    const renewable = this.tokens !== null && this.tokens.renewable;
    if (code === 4401 && renewable) {
      this._refreshFirst = true; // not fatal: the next attempt starts with a fresh token
    } else if (FATAL_CLOSES.has(code)) {
      this._setStatus({ conn: "fatal", code, reason: reason || FATAL_CLOSES.get(code), retryAt: null });
      return;
    }
    const attempt = this.status.attempt;
    const delay = backoffDelay(attempt, this.backoffBase, this.backoffCap, this.random);
    this._setStatus({ conn: "down", attempt: attempt + 1, code, reason, retryAt: this.timers.now() + delay });
    this._retry = this.timers.setTimeout(() => this._open(), delay);
  }
}
