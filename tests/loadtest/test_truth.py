"""Holding a screen's state against Redis's, and reading Redis's with the sync publisher."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis

from clients.publisher import Publisher, SyncPublisher, _run_to_end
from clients.view import RoomView
from gateway.stock import Status
from loadtest.truth import Truth, differences, read_truth


def view_of(items: list[dict[str, Any]], epoch: str = "e1") -> RoomView:
    view = RoomView("r1")
    view.apply({"t": "snapshot", "room": "r1", "seq": 1, "ts": 1, "epoch": epoch, "items": items})
    return view


def record(qty: int, ver: int, **extra: Any) -> dict[str, Any]:
    return {"sku": "tee", "qty": qty, "ver": ver, "ts": 1, **extra}


def test_a_matching_view_has_no_differences() -> None:
    truth = Truth("e1", {"tee": record(5, 9, reserve=0, platforms={})})
    assert differences(view_of([{**record(5, 9), "st": "ok"}]), truth, host=False) == []
    host_item = {**record(5, 9, reserve=0, platforms=[]), "st": "ok", "alert": "ok"}
    assert differences(view_of([host_item]), truth, host=True) == []


def test_differences_name_what_is_wrong() -> None:
    truth = Truth("e1", {"tee": record(0, 12), "cap": {"sku": "cap", "qty": 1, "ver": 1}})
    problems = differences(view_of([record(3, 11), {"sku": "old", "qty": 1, "ver": 1}], "e0"), truth,
                           host=False)
    assert problems == ["epoch 'e0', Redis has 'e1'", "cap: missing (Redis: qty 1)",
                        "old: shown but not in Redis", "tee: ver 11 qty 3, Redis has ver 12 qty 0"]


def test_hosts_must_mirror_reserve_and_platforms() -> None:
    truth = Truth("e1", {"tee": record(5, 9, reserve=0)})
    assert differences(view_of([record(5, 9, reserve=80)]), truth, host=True) == [
        "tee: reserve 80, Redis has 0"]
    assert differences(view_of([record(5, 9, reserve=80)]), truth, host=False) == []


def test_a_screen_without_a_snapshot_fails() -> None:
    assert differences(RoomView("r1"), Truth("", {}), host=False) == [
        "no snapshot: the screen is not showing the room"]


def test_sync_publisher_sells_like_the_async_one(redis_url: str) -> None:
    with SyncPublisher(redis_url) as pub:
        assert pub.set("r1", "tee", 2, name="Tee", initial=2, reserve=1,
                       platforms={"douyin": 2}).status is Status.OK
        assert pub.adjust("r1", "tee", -1, platform="douyin").qty == 1
        assert pub.adjust("r1", "tee", -1, platform="douyin").qty == 0
        refused = pub.adjust("r1", "tee", -1, platform="douyin")
        assert (refused.status, refused.qty, refused.ver) == (Status.INSUFFICIENT, 0, 3)
        assert pub.release("r1", "tee", 1).qty == 1
        assert pub.adjust("r1", "nothing", -1).status is Status.UNKNOWN
        assert pub.set("r1", "tee", 1, version=2).status is Status.STALE
        with pytest.raises(ValueError, match="invalid room"):
            pub.set("bad room", "tee", 1)
        stored = pub.stock("r1")

    async def async_view() -> dict[str, dict[str, Any]]:
        async with Publisher(redis_url) as apub:
            return await apub.stock("r1")

    assert stored == asyncio.run(async_view())
    assert stored["tee"]["qty"] == 1
    assert stored["tee"]["ver"] == 4
    assert stored["tee"]["platforms"] == {"douyin": 0}

    truth = read_truth(redis.Redis.from_url(redis_url), "r1")
    assert truth.records == stored
    assert truth.epoch


def test_sync_publisher_fails_fast_when_redis_is_gone() -> None:
    with SyncPublisher("redis://127.0.0.1:1/0") as pub, pytest.raises(redis.ConnectionError):
        pub.adjust("r1", "tee", -1)


def test_a_suspending_script_call_is_refused() -> None:
    async def suspends() -> Any:
        await asyncio.sleep(0)

    with pytest.raises(RuntimeError, match="suspended"):
        _run_to_end(suspends())
