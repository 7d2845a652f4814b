"""Every dead-letter code is in the documented table (docs/messages.md#dead-letter-codes)."""

from __future__ import annotations

import re
from pathlib import Path

from course_audit.model import ErrorCode

MESSAGES = Path(__file__).resolve().parents[2] / "docs" / "messages.md"


def test_the_codes_table_lists_every_code_and_no_other() -> None:
    text = MESSAGES.read_text(encoding="utf-8")
    table = text.split("### Dead-letter codes", 1)[1].split("\n\n", 2)[2].split("\n\n", 1)[0]
    documented = re.findall(r"^\| `([a-z_]+)` \|", table, flags=re.MULTILINE)
    assert sorted(documented) == sorted(code.value for code in ErrorCode)
