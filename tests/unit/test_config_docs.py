"""README.md's configuration table agrees with the settings declared in course_audit.config.

Expected rows come from `Settings.variables()`; the table is read from README.md. Adding a
setting without a row, a row without a setting, or changing a default or a meaning in only one
of the two places fails here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from course_audit.config import Settings, Variable

README = Path(__file__).resolve().parents[2] / "README.md"
SECTION = "## Configuration"
NONE = "(none)"


def shown(default: object) -> str:
    """A default as the table shows it: the text one would put in the variable."""
    if default is None or default == ():
        return NONE
    if isinstance(default, bool):
        text = "true" if default else "false"
    elif isinstance(default, tuple):
        text = ",".join(str(item) for item in default)
    else:
        text = str(default)
    return f"`{text}`"


def row(var: Variable) -> str:
    return f"| `{var.name}` | {shown(var.default)} | {var.doc} |"


def table() -> dict[str, tuple[str, str]]:
    """Variable -> (default cell, meaning cell), from the Configuration section's table."""
    lines = README.read_text(encoding="utf-8").splitlines()
    start = lines.index(SECTION) + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("## ")), len(lines))
    rows: dict[str, tuple[str, str]] = {}
    body = [line for line in lines[start:end] if line.startswith("|")][2:]  # header, rule
    for line in body:
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        assert len(cells) == 3, f"README row is not `variable | default | meaning`: {line}"
        variable, default, meaning = cells
        assert variable.startswith("`") and variable.endswith("`"), line
        name = variable.strip("`")
        assert name not in rows, f"README lists {name} twice"
        rows[name] = (default, meaning)
    return rows


def test_the_table_is_found() -> None:
    assert len(table()) >= 10


def test_every_declared_variable_is_documented_and_every_documented_one_declared() -> None:
    declared = {var.name: var for var in Settings.variables()}
    documented = table()
    missing = [row(declared[name]) for name in declared if name not in documented]
    assert not missing, "add to README.md's configuration table:\n" + "\n".join(missing)
    unknown = sorted(set(documented) - set(declared))
    assert not unknown, f"README.md documents variables no setting declares: {unknown}"


@pytest.mark.parametrize("var", Settings.variables(), ids=lambda var: var.name)
def test_the_row_shows_the_declared_default_and_meaning(var: Variable) -> None:
    documented = table()
    assert var.name in documented, f"add to README.md's configuration table: {row(var)}"
    default, meaning = documented[var.name]
    assert (default, meaning) == (shown(var.default), var.doc), f"expected: {row(var)}"


@pytest.mark.parametrize(
    "var", [v for v in Settings.variables() if shown(v.default) != NONE], ids=lambda v: v.name
)
def test_a_shown_default_reads_back_as_the_default(var: Variable) -> None:
    # The table's text is what one would put in the variable to get the default.
    assert var.parse(var.name, shown(var.default).strip("`")) == var.default
