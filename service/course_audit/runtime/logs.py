"""Logging set-up: one JSON object per line, or plain text for a terminal.

Nothing a client sent is logged (docs/operations.md#logs): a record about a request that
carries an exception (from aiohttp, asyncio or the HTTP server module) keeps the traceback's
frames and exception types but not the exceptions' messages, which quote request lines and
headers; aiohttp's own "Error handling request" for a request it could not parse becomes one
"bad request refused" line; and a token-like `access_token=...` or `Bearer ...` left in any
line is masked.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import traceback
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp.http_exceptions import HttpProcessingError

# Attributes every LogRecord has; anything else was passed with `extra=` and is logged.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}

#: Loggers whose exceptions may quote what a client sent.
REQUEST_LOGGERS = ("aiohttp", "asyncio", "course_audit.runtime.http_server")
_SECRET = re.compile(r"(access_token=|\bbearer\s+)[^\s&\"'\\]+", re.IGNORECASE)
MASK = "[redacted]"


def _about_requests(name: str) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in REQUEST_LOGGERS)


_CAUSE = "\n\nThe above exception was the direct cause of the following exception:\n\n"
_CONTEXT = "\n\nDuring handling of the above exception, another exception occurred:\n\n"


def _frames(exc: BaseException) -> str:
    kind = type(exc)
    tb = "".join(traceback.format_tb(exc.__traceback__))
    return f"Traceback (most recent call last):\n{tb}{kind.__module__}.{kind.__qualname__}"


def frames_only(exc: BaseException) -> str:
    """A traceback of `exc` and the exceptions behind it: frames and types, no messages."""
    chain: list[tuple[BaseException, str]] = []  # each with how it follows the next one
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if current.__cause__ is not None:
            chain.append((current, _CAUSE))
            current = current.__cause__
        elif current.__context__ is not None and not current.__suppress_context__:
            chain.append((current, _CONTEXT))
            current = current.__context__
        else:
            chain.append((current, ""))
            current = None
    out = _frames(chain[-1][0])
    for later, joint in reversed(chain[:-1]):  # oldest first, as Python prints them
        out += joint + _frames(later)
    return out


def mask_secrets(text: str) -> str:
    """`text` with the value after `access_token=` or `Bearer ` replaced by a mask."""
    return _SECRET.sub(lambda m: m.group(1) + MASK, text)


class RequestDataFilter(logging.Filter):
    """Rewrites records about requests so that they hold nothing the client sent."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.exc_info or not _about_requests(record.name):
            return True
        exc = record.exc_info[1]
        if isinstance(exc, HttpProcessingError):
            # aiohttp's "Error handling request from %s" with the parser's error.
            peer = record.args[0] if isinstance(record.args, tuple) and record.args else None
            record.msg, record.args = "bad request refused", None
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.__dict__.update(error=type(exc).__name__, status=exc.code, peer=peer)
            record.exc_info, record.exc_text = None, None
        elif exc is not None:
            record.exc_text = frames_only(exc)
            record.exc_info = None
        return True


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line with its `extra` fields."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            doc["exc"] = record.exc_text
        try:
            line = orjson.dumps(doc, default=str).decode()
        except TypeError:  # a lone surrogate (bytes that were not UTF-8): escape it
            line = json.dumps(doc, default=str, separators=(",", ":"))
        return mask_secrets(line)


class TextFormatter(logging.Formatter):
    """`time level logger: message`, tokens masked."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return mask_secrets(super().format(record))


def configure(level: str, fmt: str) -> None:
    """Route all logging to stderr in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(RequestDataFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiokafka is chatty at INFO about every (re)join; keep its warnings.
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, root.level))
