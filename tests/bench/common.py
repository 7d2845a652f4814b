"""Shared pieces of `make bench`: machine facts, progress lines, tables and JSON results."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

RESULTS = ROOT / "bench-results"


def progress(message: str) -> None:
    """One line per step, with a timestamp, so long runs show where they are."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kb = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_kb = int(line.split()[1])
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def versions(database_url: str | None = None) -> dict[str, str]:
    found = {}
    for dist in ("aiokafka", "fastavro", "asyncpg", "aiohttp", "orjson"):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = "missing"
    from harness import load_local_services

    found["kafka"] = load_local_services().KAFKA_VERSION
    if database_url:
        try:
            out = subprocess.run(
                ["psql", database_url, "-Atc", "SHOW server_version"],
                capture_output=True,
                text=True,
                timeout=10,
            )
            found["postgresql"] = out.stdout.strip() or "unknown"
        except OSError:
            found["postgresql"] = "unknown"
    return found


def median(values: Iterable[float]) -> float:
    return float(statistics.median(list(values)))


def paired_ratio(api: list[dict[str, Any]], bare: list[dict[str, Any]]) -> float:
    """The median over repeats of API req/s / bare req/s, each API result over the bare
    result of the same repeat (one load generator run alternating between the two servers):
    a slow spell of the machine (the load generator and PostgreSQL share the cores with the
    servers) falls on both of a pair, where a ratio of medians could set one repeat's API
    against another's bare handler."""
    return median(a["rps"] / b["rps"] for a, b in zip(api, bare, strict=True))


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return float(ordered[k])


@dataclass
class Report:
    """One benchmark's result file: parameters, every run, medians and ratios."""

    name: str
    parameters: dict[str, Any]
    runs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    medians: dict[str, Any] = field(default_factory=dict)
    ratios: dict[str, float] = field(default_factory=dict)
    targets: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # Peak resident memory (VmHWM, MiB) of the service processes the benchmark started,
    # by role ("consume", "serve", "run"): the largest over the benchmark's runs.
    peak_rss_mib: dict[str, float] = field(default_factory=dict)
    # The tables the benchmark printed, as data (title, header, rows), so that one run's
    # bench-results/summary.md can show them all (tests/bench/summary.py).
    tables: list[dict[str, Any]] = field(default_factory=list)
    # Wall time of the whole benchmark (load, runs, baselines), set by run.py.
    wall_s: float | None = None

    def table(self, title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
        """`table`, also kept in the result file."""
        self.tables.append(
            {"title": title, "header": list(header), "rows": [list(r) for r in rows]}
        )
        return table(title, header, rows)

    def note_rss(self, role: str, mib: float | None) -> None:
        if mib is not None:
            self.peak_rss_mib[role] = max(self.peak_rss_mib.get(role, 0.0), round(mib, 1))

    def rss_table(self) -> str:
        return self.table(
            f"peak RSS of the service processes ({self.name})",
            ["process", "peak RSS MiB"],
            [[role, mib] for role, mib in sorted(self.peak_rss_mib.items())],
        )

    def write(self, database_url: str | None) -> Path:
        RESULTS.mkdir(exist_ok=True)
        path = RESULTS / f"{self.name}.json"
        doc = {
            "benchmark": self.name,
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": machine(),
            "versions": versions(database_url),
            "parameters": self.parameters,
            "runs": self.runs,
            "medians": self.medians,
            "ratios": self.ratios,
            "targets": self.targets,
            "notes": self.notes,
            "peak_rss_mib": self.peak_rss_mib,
            "wall_s": self.wall_s,
            "tables": self.tables,
        }
        path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
        return path


def peak_rss_mib(pid: int) -> float | None:
    """A live process's peak resident set size (VmHWM in /proc/<pid>/status), in MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return None


def stop_with_peak_rss(proc: Any) -> float | None:
    """Read a ServiceProcess's peak RSS while it still runs, then stop it (SIGTERM)."""
    mib = None
    if proc.proc is not None and proc.proc.poll() is None:
        mib = peak_rss_mib(proc.pid)
    proc.stop()
    return mib


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(c) for c in header]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = [title, "  ".join(h.ljust(w) for h, w in zip(cells[0], widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for row in cells[1:]:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)
