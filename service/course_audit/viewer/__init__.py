"""The course-activity viewer: static files the API process serves at /viewer/ (docs/api.md#viewer).

Three files (HTML, one ES module, one style sheet) read once from the package at start, served
from memory with an ETag, and strict headers: a Content-Security-Policy that allows only this
origin's own scripts, styles and requests (no inline script, no framing), `nosniff`, and
revalidation on every load so that a new release is picked up at once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources

from aiohttp import web

from course_audit.runtime.web import Handler

VIEWER_PATH = "/viewer/"
STATIC_PACKAGE = "course_audit.viewer"
#: name -> media type; nothing else is served (no directory listing, no path walking).
FILES: dict[str, str] = {
    "index.html": "text/html",
    "viewer.js": "text/javascript",
    "viewer.css": "text/css",
}
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)
#: Sent with every viewer file. `no-cache`: a browser may keep a copy but asks again each time
#: (a 304 while the ETag matches).
HEADERS: Mapping[str, str] = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Cache-Control": "no-cache",
}


@dataclass(frozen=True, slots=True)
class StaticFile:
    body: bytes
    content_type: str
    etag: str


def load_files() -> dict[str, StaticFile]:
    """The viewer's files from the installed package (package data, shipped in the wheel)."""
    static = resources.files(STATIC_PACKAGE).joinpath("static")
    out: dict[str, StaticFile] = {}
    for name, content_type in FILES.items():
        body = static.joinpath(name).read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        out[name] = StaticFile(body, content_type, etag)
    return out


def _etag_matches(header: str | None, etag: str) -> bool:
    if header is None:
        return False
    tags = {t.strip().removeprefix("W/") for t in header.split(",")}
    return "*" in tags or etag in tags


def viewer_handler(files: Mapping[str, StaticFile]) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        name = request.match_info.get("name") or "index.html"
        found = files.get(name)
        if found is None:
            raise web.HTTPNotFound()
        headers = {**HEADERS, "ETag": found.etag}
        if _etag_matches(request.headers.get("If-None-Match"), found.etag):
            return web.Response(status=304, headers=headers)
        return web.Response(
            body=found.body, content_type=found.content_type, charset="utf-8", headers=headers
        )

    return handle


async def to_viewer(request: web.Request) -> web.StreamResponse:
    """GET /viewer: to /viewer/, where the page's relative URLs resolve."""
    # Relative, so that it holds behind a proxy that serves the service under a path prefix.
    raise web.HTTPMovedPermanently("viewer/", headers={"Cache-Control": "no-cache"})


def install_viewer(app: web.Application) -> None:
    """Add /viewer/, its files and the /viewer redirect to the app (before it starts)."""
    handle = viewer_handler(load_files())
    app.router.add_get("/viewer", to_viewer)
    app.router.add_get(VIEWER_PATH, handle)
    app.router.add_get(VIEWER_PATH + "{name}", handle)


__all__ = ["VIEWER_PATH", "install_viewer"]
