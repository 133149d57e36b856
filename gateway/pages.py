"""The web screens, served on the gateway's own port: no CDN, works offline.

``/overlay/<room>`` and ``/host/<room>`` return the page shells from
``clients/web/``; ``/static/<file>`` serves the bundle that ``make web`` builds
into ``clients/web/dist/`` plus the hand-written files in ``clients/web/static/``.
The page reads its room from its own URL, so one file serves every room.

The shells load ``../static/…`` relative to their own URL, so a proxy prefix in
front of the gateway needs no configuration.  That only resolves from
``/host/<room>``: ``/host/<room>/`` would look under ``/host/static/``, so a
trailing slash is redirected away, with a relative ``Location`` (the prefix
survives) and the query kept (it carries the host's token).
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Response

from gateway.protocol import valid_room

WEB_ROOT = Path(__file__).resolve().parent.parent / "clients" / "web"
_STATIC_DIRS = (WEB_ROOT / "dist", WEB_ROOT / "static")
_FILE_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,100}")
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".map": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".woff2": "font/woff2",
}
PAGES = {"overlay": "overlay.html", "host": "host.html"}


def _file(path: Path, cache: str) -> Response:
    body = path.read_bytes()
    headers = Headers([
        ("Content-Type", _TYPES.get(path.suffix, "application/octet-stream")),
        ("Content-Length", str(len(body))),
        ("Cache-Control", cache),
        ("X-Content-Type-Options", "nosniff"),
        ("Connection", "close"),
    ])
    return Response(200, "OK", headers, body)


def _without_trailing_slash(connection: ServerConnection, path: str, room: str) -> Response:
    # `../room` climbs out of `room/` (one `../` per trailing slash) to the page
    # itself, under whatever prefix the browser used.  Not permanent, so no
    # browser caches a redirect whose URL holds a token.
    slashes = len(path) - len(path.rstrip("/"))
    query = urlsplit(connection.request.path).query if connection.request is not None else ""
    location = "../" * slashes + room + (f"?{query}" if query else "")
    response = connection.respond(302, "the page has no trailing slash\n")
    response.headers["Location"] = location
    response.headers["Cache-Control"] = "no-store"
    return response


def page_response(connection: ServerConnection, path: str) -> Response | None:
    """A response for a page or static path, or None when the path is not ours."""
    parts = path.strip("/").split("/")
    if len(parts) == 2 and parts[0] in PAGES:
        if not valid_room(parts[1]):
            return connection.respond(404, "invalid room name\n")
        if path.endswith("/"):
            return _without_trailing_slash(connection, path, parts[1])
        shell = WEB_ROOT / PAGES[parts[0]]
        if not shell.is_file():
            return connection.respond(503, "web pages not installed\n")
        return _file(shell, "no-cache")
    if len(parts) == 2 and parts[0] == "static":
        if _FILE_RE.fullmatch(parts[1]) is None or ".." in parts[1]:
            return connection.respond(404, "not found\n")
        for directory in _STATIC_DIRS:
            candidate = directory / parts[1]
            if candidate.is_file():
                return _file(candidate, "no-cache")
        hint = " (run `make web` to build the bundle)" if parts[1].endswith(".js") else ""
        return connection.respond(404, f"not found{hint}\n")
    return None
