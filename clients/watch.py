"""A live stock table in the terminal, for hosts and for checking a room by eye.

Plain ANSI on purpose: it must run over ssh, in CI logs and in any terminal
without curses or extra packages.  The table itself is a pure function of the
client's state so it can be tested without a terminal or a gateway.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any, TextIO

from clients.client import StockClient, now_ms
from gateway.protocol import Audience

__all__ = ["format_age", "render_table", "watch"]

#: Redraw at least this often so the age column keeps moving while quiet.
REFRESH_SECONDS = 1.0
#: At most this many redraws a second: a busy room must not flood the terminal.
MIN_REDRAW_SECONDS = 0.1
MAX_NAME_CHARS = 32
_CLEAR = "\x1b[H\x1b[2J"
_RESET = "\x1b[0m"
_COLORS = {"ok": "\x1b[32m", "low": "\x1b[33m", "critical": "\x1b[31m", "out": "\x1b[1;31m"}


def format_age(age_ms: int | None) -> str:
    """Compact age: ``0.4s``, ``12s``, ``3m05s``, ``2h01m``; ``-`` when unknown."""
    if age_ms is None:
        return "-"
    age_ms = max(age_ms, 0)  # a publisher clock slightly ahead of ours
    if age_ms < 10_000:
        return f"{age_ms / 1000:.1f}s"
    seconds = age_ms // 1000
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _cell(value: object) -> str:
    return "-" if value is None else str(value)


def _row(item: dict[str, Any], role: str, now: int) -> list[str]:
    ts = item.get("ts")
    age = now - ts if type(ts) is int else None
    status = item.get("alert", item.get("st")) if role == "host" else item.get("st")
    row = [_cell(item.get("sku")), _cell(item.get("qty")), _cell(status),
           _cell(item.get("ver")), format_age(age)]
    if role == "host":
        name = _cell(item.get("name"))
        if len(name) > MAX_NAME_CHARS:
            name = name[: MAX_NAME_CHARS - 1] + "…"
        row.insert(1, name)
    return row


def render_table(items: dict[str, dict[str, Any]], *, role: str, now_ms: int, connected: bool,
                 room: str = "", color: bool = False) -> str:
    """The whole screen as text, SKUs sorted; hosts also get the name column and
    see the alert tier (``critical`` included) instead of the viewer status."""
    headers = ["SKU", "QTY", "STATUS", "VER", "AGE"]
    if role == "host":
        headers.insert(1, "NAME")
    rows = [_row(items[sku], role, now_ms) for sku in sorted(items)]
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    numeric = {"QTY", "VER", "AGE"}
    status_col = headers.index("STATUS")

    def line(cells: list[str], paint: bool) -> str:
        out = []
        for i, (cell, width) in enumerate(zip(cells, widths, strict=True)):
            text = cell.rjust(width) if headers[i] in numeric else cell.ljust(width)
            if paint and i == status_col and cell in _COLORS:
                text = _COLORS[cell] + text + _RESET  # pad first: escapes have no width
            out.append(text)
        return "  ".join(out).rstrip()

    state = "connected" if connected else "DISCONNECTED"
    where = f"{room} " if room else ""
    title = f"stockwire {where}({role}) {state}, {len(items)} items"
    lines = [title, line(headers, False), "  ".join("-" * w for w in widths)]
    lines += [line(r, color) for r in rows]
    if not rows:
        lines.append("(no items)")
    return "\n".join(lines) + "\n"


async def watch(url: str, room: str, role: Audience = "viewer", token: str | None = None,
                once: bool = False, stream: TextIO | None = None, *,
                snapshot_timeout: float | None = None) -> None:
    """Show a room's stock until cancelled (or, with ``once``, after the first
    snapshot).  ``stream`` defaults to the *current* ``sys.stdout``, so output
    capture works.  ``snapshot_timeout`` bounds the wait for the first snapshot
    (TimeoutError), so scripts fail instead of hanging on an unreachable
    gateway.  Permanent refusals (bad room, auth) raise
    :class:`clients.client.PermanentError`."""
    out = stream if stream is not None else sys.stdout
    tty = out.isatty()

    def draw(client: StockClient) -> None:
        table = render_table(client.items, role=role, now_ms=now_ms(), connected=client.connected,
                             room=room, color=tty)
        out.write((_CLEAR if tty and not once else "") + table)
        out.flush()

    async with StockClient(url, room, role=role, token=token) as client:
        await client.wait_for(lambda c: c.snapshots > 0, snapshot_timeout)
        draw(client)
        if once:
            return
        events = aiter(client)
        loop = asyncio.get_running_loop()
        while True:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a
            # cancellation that races with the event, and watch() would never end.
            try:
                async with asyncio.timeout(REFRESH_SECONDS):
                    await anext(events)
                client.drain()  # one redraw covers every event already queued
            except TimeoutError:
                pass
            except StopAsyncIteration:
                return
            started = loop.time()
            draw(client)
            await asyncio.sleep(max(0.0, started + MIN_REDRAW_SECONDS - loop.time()))
