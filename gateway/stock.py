"""Stock operations: what a stock service may do to a SKU, and their results.

The same rules run in two places: :func:`apply_op` here (the in-process broker
used by ``stockwire demo``) and ``stock.lua`` inside Redis, which changes the
stored record and publishes it in one atomic step.  The broker contract tests
run both against the same cases so they cannot drift apart.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from importlib import resources
from typing import Any

from gateway.protocol import MAX_INT, PLATFORM_PATTERN, SKU_PATTERN, StockRecord

LUA_SCRIPT: str = resources.files("gateway").joinpath("stock.lua").read_text()

#: Optional fields a publisher may set alongside any operation.
EXTRA_FIELDS = ("name", "initial", "platforms", "reserve", "safety", "batches")


class OpKind(StrEnum):
    SET = "set"  # absolute quantity
    ADJUST = "adjust"  # add a delta (negative for sales); refused below zero
    RELEASE = "release"  # move units from the reserve into sellable stock


class Status(StrEnum):
    OK = "ok"
    INSUFFICIENT = "insufficient"  # the change would take stock (or reserve) below zero
    UNKNOWN = "unknown"  # adjust/release of a SKU that was never set
    STALE = "stale"  # an explicit version not above the stored one
    INVALID = "invalid"  # bad arguments; nothing changed


@dataclass(slots=True, frozen=True)
class StockOp:
    kind: OpKind
    sku: str
    amount: int
    fields: dict[str, Any] = field(default_factory=dict)
    version: int | None = None
    platform: str | None = None


@dataclass(slots=True, frozen=True)
class OpResult:
    status: Status
    qty: int
    ver: int
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status is Status.OK


def _utf8(text: str) -> bool:
    """Whether ``text`` has a UTF-8 form (a lone surrogate has none), as stock.lua requires."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _integer(value: object) -> bool:
    # bool is an int subclass; stock.lua takes decimal digits only, never "1e3" or " 5".
    return type(value) is int


def _validate_extras(fields: dict[str, Any]) -> str:
    """Return a problem description, or '' when the extras are acceptable."""
    for key, value in fields.items():
        if key not in EXTRA_FIELDS:
            return f"unknown field {key}"
        if key in ("initial", "reserve") and (type(value) is not int or not 0 <= value <= MAX_INT):
            return f"{key} must be a non-negative integer"
        if key == "name" and (not isinstance(value, str) or not _utf8(value) or len(value) > 200):
            return "name must be UTF-8 text of at most 200 characters"
        if key == "safety" and (type(value) not in (int, float) or not 0 <= value < 1):
            return "safety must be a number in [0, 1)"
        if key == "batches":
            if not isinstance(value, list) or len(value) > 32:
                return "batches must be a list of at most 32 entries"
            for batch in value:
                if not isinstance(batch, dict) or set(batch) != {"at", "qty"} or not all(
                    type(batch[k]) is int and 0 <= batch[k] <= MAX_INT for k in ("at", "qty")
                ):
                    return "each batch is a map with exactly at and qty, non-negative integers"
        if key == "platforms":
            if not isinstance(value, dict) or len(value) > 16:
                return "platforms must be a map of at most 16 entries"
            for name, qty in value.items():
                if not isinstance(name, str) or not re.fullmatch(PLATFORM_PATTERN, name):
                    return "platform names must match " + PLATFORM_PATTERN
                if type(qty) is not int or not 0 <= qty <= MAX_INT:
                    return f"platforms.{name} must be a non-negative integer"
    return ""


def apply_op(
    current: StockRecord | None, op: StockOp, now_ms: int, epoch: str | None = None
) -> tuple[OpResult, StockRecord | None]:
    """Apply ``op`` to ``current``; return the result and the new record (None if unchanged).

    ``epoch`` is the room's data epoch, stamped on the new record as ``ep``
    (stock.lua does the same from the epoch key).
    """
    qty = current.qty if current else 0
    ver = current.ver if current else 0

    def refuse(status: Status, detail: str = "") -> tuple[OpResult, None]:
        return OpResult(status, qty, ver, detail), None

    if not isinstance(op.sku, str) or not _utf8(op.sku) or not re.fullmatch(SKU_PATTERN, op.sku):
        return refuse(Status.INVALID, "sku must be UTF-8 matching " + SKU_PATTERN)
    if op.platform is not None and not re.fullmatch(PLATFORM_PATTERN, op.platform):
        return refuse(Status.INVALID, "platform must match " + PLATFORM_PATTERN)
    if not _integer(op.amount) or abs(op.amount) > MAX_INT:
        return refuse(Status.INVALID, "amount must be an integer")
    problem = _validate_extras(op.fields)
    if problem:
        return refuse(Status.INVALID, problem)
    wire: dict[str, Any] = current.to_wire() if current else {"sku": op.sku, "qty": 0}
    if op.kind is OpKind.SET:
        if op.amount < 0:
            return refuse(Status.INVALID, "quantity must be >= 0")
        wire["qty"] = op.amount
    elif current is None:
        return refuse(Status.UNKNOWN, "SKU has never been set")
    elif op.kind is OpKind.ADJUST:
        if qty + op.amount < 0:
            return refuse(Status.INSUFFICIENT, f"only {qty} left")
        if op.platform is not None:
            platforms = dict(wire.get("platforms") or {})
            have = platforms.get(op.platform, 0)
            if have + op.amount < 0:
                return refuse(Status.INSUFFICIENT, f"only {have} left on {op.platform}")
            platforms[op.platform] = have + op.amount
            wire["platforms"] = platforms
        wire["qty"] = qty + op.amount
    elif op.kind is OpKind.RELEASE:
        reserve = wire.get("reserve") or 0
        if op.amount <= 0:
            return refuse(Status.INVALID, "release amount must be > 0")
        if op.amount > reserve:
            return refuse(Status.INSUFFICIENT, f"only {reserve} in reserve")
        wire["reserve"] = reserve - op.amount
        wire["qty"] = qty + op.amount
    wire.update(op.fields)
    if op.version is not None:
        if not _integer(op.version) or op.version > MAX_INT:
            return refuse(Status.INVALID, "version must be an integer")
        if op.version <= ver:
            return refuse(Status.STALE, f"version {op.version} <= stored {ver}")
        wire["ver"] = op.version
    else:
        wire["ver"] = ver + 1
    wire["ts"] = now_ms
    wire.pop("ep", None)
    if epoch is not None:
        wire["ep"] = epoch
    too_big = [k for k in ("qty", "ver") if wire[k] > MAX_INT]
    too_big += [f"platforms.{n}" for n, q in (wire.get("platforms") or {}).items() if q > MAX_INT]
    if too_big:
        return refuse(Status.INVALID, f"{too_big[0]} would exceed 2^53-1")
    record = StockRecord(**wire)
    return OpResult(Status.OK, record.qty, record.ver), record
