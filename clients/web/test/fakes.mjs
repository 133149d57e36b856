// A WebSocket and a clock that the tests drive by hand.
import { decodeFrame, encodeFrame } from "../src/protocol.js";

export class FakeTimers {
  constructor() {
    this.t = 0;
    this.nextId = 1;
    this.pending = new Map(); // id → {at, fn, every}
  }

  now = () => this.t;
  setTimeout = (fn, ms) => this._add(fn, ms, null);
  setInterval = (fn, ms) => this._add(fn, ms, ms);
  clearTimeout = (id) => this.pending.delete(id);
  clearInterval = (id) => this.pending.delete(id);

  _add(fn, ms, every) {
    const id = this.nextId++;
    this.pending.set(id, { at: this.t + Math.max(0, ms), fn, every });
    return id;
  }

  /** Run everything due within `ms`, in time order. */
  advance(ms) {
    const end = this.t + ms;
    for (;;) {
      let next = null;
      for (const [id, timer] of this.pending) {
        if (timer.at <= end && (next === null || timer.at < next[1].at)) next = [id, timer];
      }
      if (next === null) break;
      const [id, timer] = next;
      this.t = timer.at;
      if (timer.every === null) this.pending.delete(id);
      else timer.at += timer.every;
      timer.fn();
    }
    this.t = end;
  }

  /** The delay of the only pending one-shot timer (the reconnect). */
  retryDelay() {
    const shots = [...this.pending.values()].filter((t) => t.every === null);
    if (shots.length !== 1) throw new Error(`expected one pending timeout, found ${shots.length}`);
    return shots[0].at - this.t;
  }
}

export class FakeWebSocket {
  static instances = [];

  constructor(url) {
    this.url = url;
    this.readyState = 0;
    this.sent = [];
    this.closedWith = null;
    FakeWebSocket.instances.push(this);
  }

  static last() {
    return FakeWebSocket.instances[FakeWebSocket.instances.length - 1];
  }

  static reset() {
    FakeWebSocket.instances = [];
  }

  // -- the test plays the gateway --
  accept() {
    this.readyState = 1;
    if (this.onopen) this.onopen({});
  }

  receive(frame) {
    const bytes = encodeFrame(frame);
    this.onmessage({ data: bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength) });
  }

  drop(code = 1006, reason = "") {
    this.readyState = 3;
    if (this.onclose) this.onclose({ code, reason });
  }

  // -- the page's side --
  send(data) {
    this.sent.push(decodeFrame(data));
  }

  close(code, reason) {
    this.readyState = 3;
    this.closedWith = [code, reason];
  }
}
