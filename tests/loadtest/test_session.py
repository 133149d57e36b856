"""The per-frame checks of a screen, without sockets: frames in, request events out."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
import websocket

from loadtest import report
from loadtest.report import CheckFailed, Reporter
from loadtest.session import RoomSession, _describe, room_url


class Recorder:
    """Stands in for Locust's request event hook."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def fire(self, *, reverse: bool = False, **kwargs: Any) -> None:
        self.events.append(kwargs)

    def ok(self, name: str) -> list[float]:
        return [e["response_time"] for e in self.events if e["name"] == name and e["exception"] is None]

    def failures(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for e in self.events:
            if e["exception"] is not None:
                out.setdefault(e["name"], []).append(str(e["exception"]))
        return out


def viewer_item(sku: str = "tee", qty: int = 10, ver: int = 1, ts: int = 1000, **extra: Any) -> dict:
    return {"sku": sku, "qty": qty, "st": "out" if qty == 0 else "ok", "ver": ver, "ts": ts, **extra}


def host_item(qty: int = 10, ver: int = 1, ts: int = 1000, **extra: Any) -> dict:
    fields = {"name": "Tee", "initial": 100, "alert": "out" if qty == 0 else "ok"}
    fields.update(extra)
    return viewer_item(qty=qty, ver=ver, ts=ts, **fields)


def frame(kind: str, seq: int, items: list[dict], **extra: Any) -> bytes:
    return msgpack.packb({"t": kind, "room": "r1", "seq": seq, "ts": 1, "items": items, **extra})


def session(role: str = "viewer", **options: Any) -> tuple[RoomSession, Recorder]:
    recorder = Recorder()
    reporter = Reporter(recorder, report.HOST if role == "host" else report.VIEWER)
    return RoomSession("ws://gw", "r1", reporter, role=role, **options), recorder


def test_urls() -> None:
    assert room_url("ws://gw:1/", "r1", role="viewer", token=None) == "ws://gw:1/ws/r1"
    assert room_url("ws://gw:1", "r1", role="host", token="a.b") == "ws://gw:1/ws/r1?role=host&token=a.b"


def test_updates_report_latency_sell_out_and_restock() -> None:
    s, rec = session()
    s.handle(frame("snapshot", 5, [viewer_item(qty=3, ver=1)], epoch="e1"), 2000)
    s.handle(frame("update", 6, [viewer_item(qty=1, ver=3, ts=2000)]), 2040)
    s.handle(frame("update", 7, [viewer_item(qty=0, ver=4, ts=2100)]), 2125)
    s.handle(frame("update", 8, [viewer_item(qty=500, ver=5, ts=2200)]), 2290)
    assert rec.failures() == {}
    assert rec.ok(report.UPDATE) == [40, 25, 90]
    assert rec.ok(report.SOLD_OUT_SEEN) == [25]
    assert rec.ok(report.RESTOCK_SEEN) == [90]
    assert (s.sold_out_seen, s.restock_seen, s.updates) == (1, 1, 3)
    assert s.view.items["tee"]["qty"] == 500


def test_a_version_going_backwards_fails() -> None:
    s, rec = session()
    s.handle(frame("snapshot", 1, [viewer_item(ver=7)], epoch="e1"), 2000)
    s.handle(frame("update", 2, [viewer_item(ver=7)]), 2000)  # a repeat is harmless
    assert rec.failures() == {}
    s.handle(frame("update", 3, [viewer_item(qty=9, ver=6)]), 2000)
    assert list(rec.failures()) == [report.BACKWARDS]
    assert s.view.items["tee"]["ver"] == 7  # the view kept the newer record


def test_a_snapshot_of_the_same_epoch_must_not_go_back_but_a_new_epoch_may() -> None:
    s, rec = session()
    s.handle(frame("snapshot", 1, [viewer_item(ver=7)], epoch="e1"), 2000)
    s.handle(frame("snapshot", 2, [viewer_item(ver=2)], epoch="e2"), 2000)
    assert rec.failures() == {}
    s.handle(frame("snapshot", 3, [viewer_item(ver=1)], epoch="e2"), 2000)
    assert list(rec.failures()) == [report.BACKWARDS]


def test_a_sequence_going_backwards_fails_and_a_gap_asks_for_a_resync() -> None:
    s, rec = session()
    s.handle(frame("snapshot", 10, [viewer_item()], epoch="e1"), 2000)
    s.handle(frame("update", 12, [viewer_item(ver=2)]), 2000)
    assert rec.ok(report.RESYNC) == [0]
    assert rec.failures() == {}
    s.handle(frame("update", 11, [viewer_item(ver=3)]), 2000)
    assert list(rec.failures()) == [report.SEQ_BACKWARDS]


def test_viewers_must_not_get_host_fields_or_stats() -> None:
    s, rec = session()
    s.handle(frame("snapshot", 1, [viewer_item(reserve=800)], epoch="e1"), 2000)
    s.handle(msgpack.packb({"t": "stats", "room": "r1", "ts": 1, "viewers": 3, "skus": {}}), 2000)
    assert rec.failures() == {report.VIEWER_EXTRA: ["tee: reserve", "a viewer received a stats frame"]}


def test_viewers_get_the_name_in_snapshots_only() -> None:
    s, rec = session()
    s.handle(frame("snapshot", 1, [viewer_item(name="Tee")], epoch="e1"), 2000)
    assert rec.failures() == {}
    s.handle(frame("update", 2, [viewer_item(ver=2, name="Tee")]), 2000)
    assert rec.failures() == {report.VIEWER_EXTRA: ["tee: name"]}


def test_status_must_match_quantity() -> None:
    s, rec = session()
    s.handle(frame("snapshot", 1, [{**viewer_item(qty=0), "st": "ok"}], epoch="e1"), 2000)
    assert list(rec.failures()) == [report.STATUS_WRONG]
    h, rec = session("host")
    h.handle(frame("snapshot", 1, [host_item(qty=3, alert="out")], epoch="e1"), 2000)
    assert rec.failures() == {report.STATUS_WRONG: ["tee: alert 'out' with qty 3"]}


def test_host_items_need_alert_and_the_fields_the_sale_set() -> None:
    s, rec = session("host", required=frozenset({"alert", "st", "name", "initial", "reserve"}))
    item = host_item(reserve=5)
    del item["alert"]
    s.handle(frame("snapshot", 1, [item], epoch="e1"), 2000)
    s.handle(frame("update", 2, [host_item(ver=2)]), 2000)
    assert rec.failures() == {report.host_missing("alert"): ["tee ver 1"],
                              report.host_missing("reserve"): ["tee ver 2"]}


def test_hosts_report_alert_changes_and_stats() -> None:
    s, rec = session("host", required=frozenset({"alert"}))
    s.handle(frame("snapshot", 1, [host_item(qty=50)], epoch="e1"), 2000)
    s.handle(frame("update", 2, [host_item(qty=10, ver=2, ts=2000, alert="low")]), 2010)
    s.handle(frame("update", 3, [host_item(qty=9, ver=3, ts=2000, alert="low")]), 2020)
    s.handle(frame("update", 4, [host_item(qty=0, ver=4, ts=2000)]), 2030)
    s.handle(msgpack.packb({"t": "stats", "room": "r1", "ts": 2030, "viewers": 3, "skus": {}}), 2035)
    assert rec.failures() == {}
    assert rec.ok(report.alert_seen("low")) == [10]
    assert rec.ok(report.alert_seen("out")) == [30]
    assert rec.ok(report.STATS) == [5]
    assert s.stats_frames == 1


def test_host_platforms_must_add_up_when_only_platform_sales_change_stock() -> None:
    s, rec = session("host", platforms_sum=True)
    s.handle(frame("snapshot", 1, [host_item(qty=10, platforms={"douyin": 6, "taobao": 4})], epoch="e"), 1)
    assert rec.failures() == {}
    s.handle(frame("update", 2, [host_item(qty=9, ver=2, platforms={"douyin": 6, "taobao": 4})]), 1)
    assert list(rec.failures()) == [report.PLATFORMS_SUM]


@pytest.mark.parametrize("payload", [b"\xc1", msgpack.packb([1, 2])])
def test_undecodable_frames_fail(payload: bytes) -> None:
    s, rec = session()
    s.handle(payload, 1)
    assert list(rec.failures()) == [report.BAD_FRAME]


def test_failures_carry_the_reason() -> None:
    rec = Recorder()
    Reporter(rec, "x").fail("name", "why")
    (event,) = rec.events
    assert isinstance(event["exception"], CheckFailed)
    assert str(event["exception"]) == "why"


def test_refused_handshakes_group_by_status_and_reason() -> None:
    exc = websocket.WebSocketBadStatusException("Handshake status %d %s -+-+- %s -+-+- %s", 401,
                                                "Unauthorized", {"date": "now"}, b"invalid token: x\n")
    assert _describe(exc) == "HTTP 401: invalid token: x"
    assert _describe(ConnectionRefusedError(111, "refused")) == "ConnectionRefusedError: [Errno 111] refused"
