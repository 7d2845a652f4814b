"""The viewer's "Download export" in headless chromium: the export route read with fetch() and
the Authorization header, saved from a Blob under the name the server gives.

Same stack, data and helpers as test_viewer.py (viewer_support.py).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest
from selenium.webdriver.common.by import By
from viewer_support import (
    Viewer,
    by_id,
    enter_token,
    ids,
    look_up,
    open_page,
    rows_are,
    shot,
    status_says,
    viewer_fixture,
    wait_for,
)

pytestmark = pytest.mark.e2e


viewer = viewer_fixture("viewer-export")


def oldest_first(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(events, key=lambda e: e["created_at"])


def downloaded(folder: Path, suffix: str) -> Path | None:
    """The finished download (chromium writes `*.crdownload` until it is complete)."""
    done = [p for p in folder.iterdir() if p.name.endswith(suffix)]
    partial = [p for p in folder.iterdir() if p.name.endswith(".crdownload")]
    return done[0] if len(done) == 1 and not partial else None


@pytest.mark.parametrize("fmt", ["ndjson", "csv"])
async def test_download_export(viewer: Viewer, fmt: str, tmp_path: Path) -> None:
    d = open_page(viewer)
    d.execute_cdp_cmd(
        "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(tmp_path)}
    )
    enter_token(d, viewer.token)
    look_up(d, "sis", "SIS-4002", per_page=10)
    copy = oldest_first(viewer.data.copy)
    wait_for(d, "course 4002", lambda d: rows_are(d, len(copy)))
    d.find_element(By.CSS_SELECTOR, f"#export-format option[value={fmt}]").click()
    by_id(d, "export").click()
    wait_for(d, "the download", lambda d: status_says(d, r"^Downloaded "))
    saved = wait_for(d, "the saved file", lambda d: downloaded(tmp_path, f".{fmt}"))
    # The server's file name (Content-Disposition): the numeric id and an open range.
    assert saved.name == f"course-4002_beginning_latest.{fmt}"
    assert by_id(d, "status").text == f"Downloaded {saved.name} ({saved.stat().st_size} bytes)."
    text = saved.read_text("utf-8")
    if fmt == "ndjson":
        lines = [json.loads(line) for line in text.splitlines()]
        assert [e["id"] for e in lines] == ids(copy)
        assert [e["event_type"] for e in lines] == ["created", "copied_from"]
    else:
        rows = list(csv.DictReader(io.StringIO(text)))
        assert [r["id"] for r in rows] == ids(copy)
        assert [r["event_type"] for r in rows] == ["created", "copied_from"]
    shot(d, f"11-export-{fmt}")
