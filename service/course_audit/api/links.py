"""Absolute URLs: a request's base URL and a page's `Link` header (docs/api.md#link-header)."""

from __future__ import annotations

import re
from urllib.parse import quote

from aiohttp import web

from course_audit.api.errors import bad_parameter
from course_audit.api.params import FIRST
from course_audit.config import Settings
from course_audit.store.queries import NO_FILTERS, Filters

# What a Host (or X-Forwarded-Host) may hold: a name, IPv4 or [IPv6] with an optional port.
# Anything else could smuggle '<', '>' or ',' into the Link header.
_HOST = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?"
)
# The longest host: a DNS name (253 characters) and a port. Anything longer is refused.
_HOST_MAX = 259
# Characters left as they are in query values; everything else is percent-encoded.
_SAFE = ":"


def _first(header: str | None) -> str | None:
    if not header:
        return None
    value = header.split(",", 1)[0].strip()
    return value or None


def base_url(request: web.Request, settings: Settings) -> str:
    """The configured public base URL, else the request's scheme and host (no trailing '/').

    X-Forwarded-Proto/-Host count only with AUDIT_TRUST_PROXY: otherwise any client could
    point the links it is given somewhere else.
    """
    if settings.public_base_url:
        return settings.public_base_url
    scheme = request.scheme
    host = request.host
    if settings.trust_proxy:
        proto = _first(request.headers.get("X-Forwarded-Proto"))
        if proto is not None and proto.lower() in ("http", "https"):
            scheme = proto.lower()
        forwarded_host = _first(request.headers.get("X-Forwarded-Host"))
        if forwarded_host is not None:
            host = forwarded_host
    if len(host) > _HOST_MAX or not _HOST.fullmatch(host):
        raise bad_parameter("Host: the request's host is not a valid host name")
    return f"{scheme}://{host}"


def filter_params(filters: Filters) -> list[str]:
    """The filters as query parameters in canonical form: each event type (sorted, once),
    then user_id, then event_source; none when no filter is set."""
    parts = [f"event_type={quote(t, safe=_SAFE)}" for t in filters.event_types]
    if filters.user_id is not None:
        parts.append(f"user_id={filters.user_id}")
    if filters.event_source is not None:
        parts.append(f"event_source={quote(filters.event_source, safe=_SAFE)}")
    return parts


def page_url(
    path_url: str,
    start_time: str | None,
    end_time: str | None,
    page: str,
    per_page: int,
    filters: Filters = NO_FILTERS,
) -> str:
    """One page's URL: the kept time window and filters, then `page=...&per_page=N` last."""
    parts = []
    if start_time is not None:
        parts.append(f"start_time={quote(start_time, safe=_SAFE)}")
    if end_time is not None:
        parts.append(f"end_time={quote(end_time, safe=_SAFE)}")
    parts.extend(filter_params(filters))
    parts.append(f"page={quote(page, safe=_SAFE)}")
    parts.append(f"per_page={per_page}")
    return f"{path_url}?{'&'.join(parts)}"


def link_header(
    path_url: str,
    start_time: str | None,
    end_time: str | None,
    current: str,
    next_page: str | None,
    per_page: int,
    filters: Filters = NO_FILTERS,
) -> str:
    """`current`, `next` (when there is one) and `first`, joined by ',' with no space."""
    entries = [(current, "current")]
    if next_page is not None:
        entries.append((next_page, "next"))
    entries.append((FIRST, "first"))
    return ",".join(
        f'<{page_url(path_url, start_time, end_time, page, per_page, filters)}>; rel="{rel}"'
        for page, rel in entries
    )
