"""The viewer's files as the package loads them, and the ETag comparison (pure logic; the page
itself is tested in a browser: tests/e2e/test_viewer.py)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from course_audit.viewer import FILES, _etag_matches, load_files

STATIC = Path(__file__).resolve().parents[2] / "service" / "course_audit" / "viewer" / "static"


def test_every_file_of_the_folder_is_served_and_nothing_else() -> None:
    files = load_files()
    assert sorted(files) == sorted(p.name for p in STATIC.iterdir())
    for name, found in files.items():
        body = (STATIC / name).read_bytes()
        assert found.body == body
        assert found.content_type == FILES[name]
        assert found.etag == '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def test_the_page_loads_only_its_own_module_and_style_sheet() -> None:
    page = (STATIC / "index.html").read_text("utf-8")
    assert re.findall(r"<script\b[^>]*>", page) == ['<script type="module" src="viewer.js">']
    assert re.findall(r"<link\b[^>]*>", page) == ['<link rel="stylesheet" href="viewer.css">']
    assert "<style" not in page
    assert not re.search(r"\son[a-z]+=", page)  # no inline event handlers
    assert not re.search(r"https?://", page)  # nothing from another origin


def test_the_script_never_writes_markup() -> None:
    script = (STATIC / "viewer.js").read_text("utf-8")
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script


@pytest.mark.parametrize(
    ("header", "matches"),
    [
        (None, False),
        ('"abc"', True),
        ('W/"abc"', True),
        ('"other", "abc"', True),
        ("*", True),
        ('"other"', False),
        ("abc", False),
        ("", False),
    ],
)
def test_if_none_match(header: str | None, matches: bool) -> None:
    assert _etag_matches(header, '"abc"') is matches
