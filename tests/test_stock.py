"""gateway/stock.py apply_op: the in-process half of the stock operation contract."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.protocol import MAX_INT, BadMessage, StockRecord, decode_record, encode_record
from gateway.stock import EXTRA_FIELDS, OpKind, OpResult, Status, StockOp, apply_op

NOW = 1_700_000_000_000

SET, ADJUST, RELEASE = OpKind.SET, OpKind.ADJUST, OpKind.RELEASE


def op(kind: OpKind, amount: int, sku: str = "A", **kwargs: Any) -> StockOp:
    return StockOp(kind=kind, sku=sku, amount=amount, **kwargs)


def stored(qty: int = 10, ver: int = 4, **extra: Any) -> StockRecord:
    return StockRecord(sku="A", qty=qty, ver=ver, ts=NOW - 1000, **extra)


def refused(current: StockRecord | None, stock_op: StockOp, status: Status) -> OpResult:
    """Apply an op that must be refused; check it changed nothing and return the result."""
    result, record = apply_op(current, stock_op, NOW)
    assert result.status is status, result
    assert not result.ok
    assert record is None
    assert result.qty == (current.qty if current else 0)
    assert result.ver == (current.ver if current else 0)
    assert result.detail != ""
    return result


# -- set -----------------------------------------------------------------------


def test_set_creates_sku_at_version_one() -> None:
    result, record = apply_op(None, op(SET, 10), NOW)
    assert result == OpResult(Status.OK, 10, 1)
    assert result.ok
    assert record == StockRecord(sku="A", qty=10, ver=1, ts=NOW)


def test_set_zero_creates_sold_out_sku() -> None:
    result, record = apply_op(None, op(SET, 0), NOW)
    assert result == OpResult(Status.OK, 0, 1)
    assert record == StockRecord(sku="A", qty=0, ver=1, ts=NOW)


def test_later_ops_increment_version_and_stamp_time() -> None:
    _, first = apply_op(None, op(SET, 10), NOW)
    result, second = apply_op(first, op(SET, 7), NOW + 5)
    assert result == OpResult(Status.OK, 7, 2)
    assert second == StockRecord(sku="A", qty=7, ver=2, ts=NOW + 5)
    result, third = apply_op(second, op(ADJUST, -2), NOW + 9)
    assert result == OpResult(Status.OK, 5, 3)
    assert third == StockRecord(sku="A", qty=5, ver=3, ts=NOW + 9)
    result, fourth = apply_op(third, op(ADJUST, 0), NOW + 10)
    assert result == OpResult(Status.OK, 5, 4)
    assert fourth is not None
    assert fourth.ts == NOW + 10


def test_set_negative_is_invalid() -> None:
    refused(None, op(SET, -1), Status.INVALID)
    refused(stored(), op(SET, -1), Status.INVALID)


# -- adjust --------------------------------------------------------------------


def test_adjust_to_exactly_zero() -> None:
    result, record = apply_op(stored(qty=10, ver=4), op(ADJUST, -10), NOW)
    assert result == OpResult(Status.OK, 0, 5)
    assert record == StockRecord(sku="A", qty=0, ver=5, ts=NOW)


def test_adjust_up_restocks() -> None:
    result, _ = apply_op(stored(qty=10, ver=4), op(ADJUST, 15), NOW)
    assert result == OpResult(Status.OK, 25, 5)


def test_adjust_below_zero_is_insufficient_and_reports_current_state() -> None:
    result = refused(stored(qty=5, ver=4), op(ADJUST, -6), Status.INSUFFICIENT)
    assert (result.qty, result.ver) == (5, 4)
    assert "5" in result.detail


@pytest.mark.parametrize("kind", [ADJUST, RELEASE])
def test_adjust_or_release_of_unknown_sku(kind: OpKind) -> None:
    result = refused(None, op(kind, 1), Status.UNKNOWN)
    assert (result.qty, result.ver) == (0, 0)


def test_adjust_with_platform_decrements_platform_and_total() -> None:
    current = stored(qty=10, ver=4, platforms={"douyin": 6, "kuaishou": 4})
    result, record = apply_op(current, op(ADJUST, -2, platform="douyin"), NOW)
    assert result == OpResult(Status.OK, 8, 5)
    assert record == StockRecord(
        sku="A", qty=8, ver=5, ts=NOW, platforms={"douyin": 4, "kuaishou": 4}
    )
    assert current.platforms == {"douyin": 6, "kuaishou": 4}  # input not mutated


def test_adjust_with_platform_refuses_when_platform_would_go_negative() -> None:
    current = stored(qty=10, ver=4, platforms={"douyin": 6, "kuaishou": 4})
    result = refused(current, op(ADJUST, -5, platform="kuaishou"), Status.INSUFFICIENT)
    assert "kuaishou" in result.detail
    assert current.platforms == {"douyin": 6, "kuaishou": 4}


def test_adjust_with_unlisted_platform() -> None:
    current = stored(qty=10, ver=4, platforms={"douyin": 6})
    refused(current, op(ADJUST, -1, platform="tb"), Status.INSUFFICIENT)
    result, record = apply_op(current, op(ADJUST, 3, platform="tb"), NOW)
    assert result == OpResult(Status.OK, 13, 5)
    assert record is not None
    assert record.platforms == {"douyin": 6, "tb": 3}


def test_adjust_with_platform_on_sku_without_platforms() -> None:
    result, record = apply_op(stored(qty=10, ver=4), op(ADJUST, 2, platform="douyin"), NOW)
    assert result == OpResult(Status.OK, 12, 5)
    assert record is not None
    assert record.platforms == {"douyin": 2}


def test_adjust_total_checked_before_platform() -> None:
    current = stored(qty=3, ver=4, platforms={"douyin": 9})
    result = refused(current, op(ADJUST, -4, platform="douyin"), Status.INSUFFICIENT)
    assert result.detail == "only 3 left"


@pytest.mark.parametrize("platform", ["Douyin", "", "a" * 33, "tao bao", "a.b"])
def test_bad_platform_is_invalid(platform: str) -> None:
    refused(stored(), op(ADJUST, -1, platform=platform), Status.INVALID)


# -- release -------------------------------------------------------------------


def test_release_moves_units_from_reserve() -> None:
    result, record = apply_op(stored(qty=10, ver=4, reserve=5), op(RELEASE, 3), NOW)
    assert result == OpResult(Status.OK, 13, 5)
    assert record == StockRecord(sku="A", qty=13, ver=5, ts=NOW, reserve=2)


def test_release_whole_reserve() -> None:
    _, record = apply_op(stored(qty=0, ver=4, reserve=5), op(RELEASE, 5), NOW)
    assert record == StockRecord(sku="A", qty=5, ver=5, ts=NOW, reserve=0)


@pytest.mark.parametrize("reserve", [5, 0, None])
def test_release_more_than_reserve_is_insufficient(reserve: int | None) -> None:
    refused(stored(qty=10, ver=4, reserve=reserve), op(RELEASE, 6), Status.INSUFFICIENT)


@pytest.mark.parametrize("amount", [0, -1, -5])
def test_release_non_positive_is_invalid(amount: int) -> None:
    refused(stored(qty=10, ver=4, reserve=5), op(RELEASE, amount), Status.INVALID)


# -- explicit versions -------------------------------------------------------------


def test_explicit_version_above_stored_is_used() -> None:
    result, record = apply_op(stored(qty=10, ver=4), op(SET, 8, version=10), NOW)
    assert result == OpResult(Status.OK, 8, 10)
    assert record is not None
    assert record.ver == 10


def test_explicit_version_on_new_sku() -> None:
    result, _ = apply_op(None, op(SET, 8, version=7), NOW)
    assert result == OpResult(Status.OK, 8, 7)


@pytest.mark.parametrize("version", [4, 3, 0, -1])
def test_explicit_version_not_above_stored_is_stale(version: int) -> None:
    refused(stored(qty=10, ver=4), op(SET, 8, version=version), Status.STALE)


@pytest.mark.parametrize("kind", [SET, ADJUST, RELEASE])
def test_stale_version_for_every_kind(kind: OpKind) -> None:
    refused(stored(qty=10, ver=4, reserve=3), op(kind, 1, version=4), Status.STALE)


@pytest.mark.parametrize("version", [MAX_INT + 1, True, 5.0, "7", "1e3", "0x10", " 5"], ids=repr)
def test_bad_explicit_version_is_invalid(version: int) -> None:
    refused(stored(), op(SET, 8, version=version), Status.INVALID)


def test_explicit_version_max_int_is_accepted() -> None:
    result, _ = apply_op(stored(), op(SET, 8, version=MAX_INT), NOW)
    assert result == OpResult(Status.OK, 8, MAX_INT)


# -- invalid arguments -------------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"colour": "red"}, id="unknown-field"),
        pytest.param({"qty": 5}, id="core-field-qty"),
        pytest.param({"ver": 99}, id="core-field-ver"),
        pytest.param({"initial": -1}, id="negative-initial"),
        pytest.param({"initial": 1.5}, id="float-initial"),
        pytest.param({"initial": True}, id="bool-initial"),
        pytest.param({"initial": MAX_INT + 1}, id="huge-initial"),
        pytest.param({"reserve": -1}, id="negative-reserve"),
        pytest.param({"platforms": {"Bad Name": 1}}, id="bad-platform-name"),
        pytest.param({"platforms": {"": 1}}, id="empty-platform-name"),
        pytest.param({"platforms": {"douyin": -1}}, id="negative-platform"),
        pytest.param({"platforms": {"douyin": 1.0}}, id="float-platform"),
        pytest.param({"platforms": [1]}, id="platforms-list"),
        pytest.param({"platforms": {f"p{i}": 1 for i in range(17)}}, id="too-many-platforms"),
        pytest.param({"safety": 1.0}, id="safety-one"),
        pytest.param({"safety": 1}, id="safety-int-one"),
        pytest.param({"safety": -0.1}, id="negative-safety"),
        pytest.param({"safety": True}, id="bool-safety"),
        pytest.param({"safety": float("nan")}, id="nan-safety"),
        pytest.param({"name": "x" * 201}, id="long-name"),
        pytest.param({"name": 5}, id="int-name"),
        pytest.param({"name": "bad \udc80 half"}, id="lone-surrogate-name"),
        pytest.param({"ep": "e1"}, id="epoch-is-not-a-publisher-field"),
    ],
)
@pytest.mark.parametrize("kind", [SET, ADJUST, RELEASE])
def test_invalid_extras_change_nothing(fields: dict[str, Any], kind: OpKind) -> None:
    refused(stored(qty=10, ver=4, reserve=5), op(kind, 1, fields=fields), Status.INVALID)
    if kind is SET:
        refused(None, op(kind, 1, fields=fields), Status.INVALID)


@pytest.mark.parametrize("sku", ["", "x" * 65, "a{b", "a}b", "a\nb", "\x00", "a\ud800", b"A"], ids=repr)
@pytest.mark.parametrize("kind", [SET, ADJUST, RELEASE])
def test_bad_sku_is_invalid(sku: str, kind: OpKind) -> None:
    refused(None, op(kind, 1, sku=sku), Status.INVALID)


@pytest.mark.parametrize("amount", [1.5, 2.0, True, MAX_INT + 1, -(MAX_INT + 1), "5", "1e3", "0x10", " 5"],
                         ids=repr)
@pytest.mark.parametrize("kind", [SET, ADJUST, RELEASE])
def test_bad_amount_is_invalid(amount: int, kind: OpKind) -> None:
    refused(stored(reserve=5), op(kind, amount), Status.INVALID)


# -- extras ------------------------------------------------------------------------


def test_extras_are_kept_across_later_ops() -> None:
    fields = {
        "name": "Tee", "initial": 100, "platforms": {"douyin": 60, "tb": 40}, "reserve": 10,
        "safety": 0.25,
    }
    _, first = apply_op(None, op(SET, 100, fields=fields), NOW)
    assert first == StockRecord(sku="A", qty=100, ver=1, ts=NOW, **fields)

    _, second = apply_op(first, op(ADJUST, -5, platform="tb"), NOW + 1)
    assert second == StockRecord(
        sku="A", qty=95, ver=2, ts=NOW + 1, name="Tee", initial=100,
        platforms={"douyin": 60, "tb": 35}, reserve=10, safety=0.25,
    )

    _, third = apply_op(second, op(RELEASE, 4), NOW + 2)
    assert third == StockRecord(
        sku="A", qty=99, ver=3, ts=NOW + 2, name="Tee", initial=100,
        platforms={"douyin": 60, "tb": 35}, reserve=6, safety=0.25,
    )

    _, fourth = apply_op(third, op(SET, 50, fields={"name": "Tee v2"}), NOW + 3)
    assert fourth == StockRecord(
        sku="A", qty=50, ver=4, ts=NOW + 3, name="Tee v2", initial=100,
        platforms={"douyin": 60, "tb": 35}, reserve=6, safety=0.25,
    )


def test_extra_fields_list() -> None:
    assert EXTRA_FIELDS == ("name", "initial", "platforms", "reserve", "safety", "batches")


def test_records_from_ops_pass_the_gateway_decoder() -> None:
    fields = {"name": "Tee", "initial": 20, "safety": 0.5, "platforms": {"douyin": 10}}
    _, record = apply_op(None, op(SET, 10, fields=fields), NOW)
    assert record is not None
    for stock_op in (op(ADJUST, -3, platform="douyin"), op(SET, 12, fields={"reserve": 4}), op(RELEASE, 2)):
        result, record = apply_op(record, stock_op, NOW)
        assert result.ok, result
        assert record is not None
        assert decode_record(encode_record(record)) == record


@pytest.mark.parametrize(
    ("current", "stock_op"),
    [
        pytest.param(stored(qty=MAX_INT, ver=4), op(ADJUST, 1), id="adjust-qty"),
        pytest.param(stored(qty=1, ver=4), op(ADJUST, MAX_INT), id="adjust-max-amount"),
        pytest.param(stored(qty=MAX_INT, ver=4, reserve=1), op(RELEASE, 1), id="release-qty"),
        pytest.param(stored(qty=1, ver=MAX_INT), op(SET, 2), id="auto-version"),
        pytest.param(
            stored(qty=1, ver=4, platforms={"douyin": MAX_INT}), op(ADJUST, 1, platform="douyin"),
            id="platform-qty",
        ),
    ],
)
def test_ok_results_never_exceed_max_int(current: StockRecord, stock_op: StockOp) -> None:
    result, record = apply_op(current, stock_op, NOW)
    if record is None:
        assert not result.ok
        return
    try:
        decoded = decode_record(encode_record(record))
    except BadMessage as exc:
        pytest.fail(f"apply_op returned {result.status} with a record the gateway rejects: {exc}")
    assert decoded == record


# -- epoch -------------------------------------------------------------------------


def test_records_carry_the_epoch_they_were_written_in() -> None:
    _, first = apply_op(None, op(SET, 10), NOW, "e1")
    assert first is not None
    assert first.ep == "e1"
    assert decode_record(encode_record(first)) == first
    _, second = apply_op(first, op(ADJUST, -1), NOW, "e2")  # the stored record's epoch is replaced
    assert second is not None
    assert second.ep == "e2"
    _, third = apply_op(second, op(ADJUST, -1), NOW)
    assert third is not None
    assert third.ep is None


def test_refused_ops_stamp_no_epoch() -> None:
    result, record = apply_op(None, op(ADJUST, -1), NOW, "e1")
    assert result.status is Status.UNKNOWN
    assert record is None
