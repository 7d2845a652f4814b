"""Parsers for `AUDIT_*` values: each fails with a one-line ConfigError naming the variable.

A parser is called as `parse(name, raw)` with the variable's name and its stripped, non-empty
value; `course_audit.config` pairs each setting with one.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

T = TypeVar("T")

#: (variable name, its stripped non-empty value) -> the setting's value.
Parse = Callable[[str, str], T]


class ConfigError(ValueError):
    """A bad setting; the message is one line naming the variable."""


def text(name: str, raw: str) -> str:
    return raw


def integer(lo: int, hi: int) -> Parse[int]:
    def parse(name: str, raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"{name}={raw!r} is not an integer") from None
        if not lo <= value <= hi:
            raise ConfigError(f"{name}={value} is out of range ({lo}..{hi})")
        return value

    return parse


def boolean(name: str, raw: str) -> bool:
    lowered = raw.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean (use true or false)")


def choice(*allowed: str, upper: bool = False) -> Parse[str]:
    def parse(name: str, raw: str) -> str:
        value = raw.upper() if upper else raw.lower()
        if value not in allowed:
            raise ConfigError(f"{name}={raw!r} must be one of {', '.join(allowed)}")
        return value

    return parse


def names(name: str, raw: str) -> tuple[str, ...]:
    items = tuple(part.strip() for part in raw.split(","))
    if any(not item for item in items):
        raise ConfigError(f"{name}={raw!r} has an empty entry")
    return items


def hosts(name: str, raw: str) -> str:
    for part in raw.split(","):
        host, sep, port = part.strip().rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ConfigError(f"{name}={raw!r}: {part.strip()!r} is not host:port")
    return raw


def url(*schemes: str) -> Parse[str]:
    def parse(name: str, raw: str) -> str:
        if urlsplit(raw).scheme not in schemes:
            raise ConfigError(f"{name}: URL scheme must be one of {', '.join(schemes)}")
        return raw

    return parse


def absolute_url(*schemes: str) -> Parse[str]:
    def parse(name: str, raw: str) -> str:
        parts = urlsplit(raw)
        if parts.scheme not in schemes or not parts.netloc:
            raise ConfigError(f"{name}={raw!r} is not an absolute {'/'.join(schemes)} URL")
        return raw.rstrip("/")

    return parse


def dirs(name: str, raw: str) -> tuple[Path, ...]:
    paths = tuple(Path(part.strip()) for part in raw.split(",") if part.strip())
    for path in paths:
        if not path.is_dir():
            raise ConfigError(f"{name}: {str(path)!r} is not a directory")
    return paths


def readable_file(name: str, raw: str) -> str:
    """The path of a file that can be opened for reading now (a secret or certificate)."""
    try:
        with open(raw, "rb") as f:
            f.read(1)
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read {raw!r}: {exc.strerror or exc}") from None
    return raw


def sasl_mechanism(name: str, raw: str) -> str:
    value = raw.upper()
    if value in ("OAUTHBEARER", "GSSAPI"):
        # aiokafka takes OAUTHBEARER tokens only from a provider object written in Python,
        # and GSSAPI needs Kerberos libraries this service does not ship.
        raise ConfigError(
            f"{name}={value} is not supported; use PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"
        )
    if value not in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
        raise ConfigError(f"{name}={raw!r} must be one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512")
    return value


def iana_zone(name: str, raw: str) -> str:
    try:
        ZoneInfo(raw)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"{name}={raw!r} is not a known IANA time zone") from None
    return raw
