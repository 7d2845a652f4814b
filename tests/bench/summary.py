"""bench-results/summary.md: every table of the benchmarks' result files, in Markdown.

`make bench` writes it at the end of a run (and `python tests/bench/summary.py` again from
whatever bench-results/*.json hold): the README's performance tables are copied from it, so
each figure there is one a result file holds.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from common import RESULTS, _fmt

# The order the README reads them in; benchmarks not listed come after, by name.
ORDER = ("ingest", "query", "bigstore", "freshness", "replica", "stream", "export", "scaleout")


def _cell(value: Any) -> str:
    return _fmt(value).replace("|", "\\|")


def markdown_table(title: str, header: list[Any], rows: list[list[Any]]) -> str:
    lines = [f"**{title.strip()}**", ""] if title.strip() else []
    lines.append("| " + " | ".join(_cell(h) for h in header) + " |")
    lines.append("|" + "---|" * len(header))
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _section(doc: dict[str, Any]) -> str:
    name = doc["benchmark"]
    wall = doc.get("wall_s")
    head = f"### {name}\n\n{doc['when']}" + (f", {wall / 60:.1f} min" if wall else "")
    parts = [head]
    printed = any(t["header"][:1] == ["ratio"] for t in doc.get("tables", []))
    if doc.get("ratios") and not printed:
        targets = doc.get("targets", {})
        parts.append(
            markdown_table(
                "ratios and targets",
                ["figure", "value", "target"],
                [[k, v, targets.get(k, "")] for k, v in doc["ratios"].items()],
            )
        )
    parts += [markdown_table(t["title"], t["header"], t["rows"]) for t in doc.get("tables", [])]
    return "\n\n".join(parts)


def summary(results: Path = RESULTS) -> str:
    docs = [json.loads(p.read_text()) for p in sorted(results.glob("*.json"))]
    run = next((d for d in docs if "benchmark" not in d), None)
    docs = [d for d in docs if "benchmark" in d]
    rank = {name: i for i, name in enumerate(ORDER)}
    docs.sort(key=lambda d: (rank.get(d["benchmark"], len(ORDER)), d["benchmark"]))
    if not docs:
        return "No benchmark results yet: run `make bench`.\n"
    machine = docs[0].get("machine", {})
    walls = [d["wall_s"] for d in docs if d.get("wall_s")]
    intro = [
        "## Benchmark results",
        "",
        f"Machine: {machine.get('cpu', '?')}, {machine.get('cores', '?')} cores."
        + (f" Benchmarks' wall time together: {sum(walls) / 60:.1f} min." if walls else ""),
    ]
    if run is not None:
        kind = "QUICK=1 run" if run["quick"] else "full run"
        intro.append(
            f"Last `make bench`: a {kind} of {', '.join(run['only'])} started {run['started']},"
            f" {run['wall_s'] / 60:.1f} min including the services' start. A result file"
            " written by an earlier run shows its own date below."
        )
    return "\n".join(intro) + "\n\n" + "\n\n".join(_section(d) for d in docs) + "\n"


def write_summary(results: Path = RESULTS) -> Path:
    path = results / "summary.md"
    path.write_text(summary(results))
    return path


if __name__ == "__main__":
    sys.stdout.write(summary())
