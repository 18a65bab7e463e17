"""What every benchmark prints and writes: its command line (``--rounds``, ``--quick``, ``--out``), the
statistics over rounds, the figures against their targets, and the JSON results file with the machine and
the commit measured."""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
RESULTS_DIR = BENCH / "results"


def parser(doc: str, *, rounds: int) -> argparse.ArgumentParser:
    """The options every benchmark has: ``--rounds``, ``--quick`` and ``--out``.

    Also makes SIGTERM exit through ``SystemExit``, so the ``with`` blocks stop every process started.
    """
    exit_on_sigterm()
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--rounds", type=int, default=rounds, help=f"rounds; medians are reported (default {rounds})"
    )
    p.add_argument(
        "--quick", action="store_true", help="tiny sizes, one round: keeps the script working in CI"
    )
    p.add_argument(
        "--out", type=Path, help="JSON results file (default bench/results/<name>.json; quick/<name>.json)"
    )
    return p


def exit_on_sigterm() -> None:
    """Make SIGTERM raise ``SystemExit``, so ``with`` blocks and ``finally`` clauses run."""

    def stop(signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


@dataclass(frozen=True)
class Target:
    """One figure against its target, as the summary table shows it."""

    what: str
    measured: float
    unit: str
    baseline: float | None
    baseline_what: str
    target: str
    met: bool
    ratio: float | None = None

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Target:
        """The target as a results file holds it (see ``write_result``)."""
        return cls(
            what=str(doc["what"]),
            measured=float(doc["measured"]),
            unit=str(doc["unit"]),
            baseline=None if doc.get("baseline") is None else float(doc["baseline"]),
            baseline_what=str(doc.get("baseline_what", "")),
            target=str(doc["target"]),
            met=bool(doc["met"]),
            ratio=None if doc.get("ratio") is None else float(doc["ratio"]),
        )


def print_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """A plain text table, numbers right-aligned."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    numeric = [all(_is_number(r[i]) for r in cells) and bool(cells) for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if n else v.ljust(w) for v, w, n in zip(values, widths, numeric, strict=True)
        )

    print(line(list(headers)).rstrip())
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print(line(row).rstrip())


def _cell(value: object) -> str:
    if isinstance(value, float):
        return number(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return "-" if value is None else str(value)


def _is_number(text: str) -> bool:
    try:
        float(text.replace(",", ""))
    except ValueError:
        return text == "-"
    return True


def progress(message: str) -> None:
    """A line about the run in progress (stdout, flushed, so it interleaves with the tables)."""
    print(message, flush=True)


def number(value: float) -> str:
    """Three significant digits below 100, whole numbers with thousands separators above."""
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def print_targets(targets: Sequence[Target]) -> None:
    """The summary table: what, measured, baseline, ratio, target, met."""
    print()
    print_table(
        ["what", "measured", "baseline", "ratio", "target", "met"],
        [
            [
                t.what,
                f"{number(t.measured)} {t.unit}",
                "-" if t.baseline is None else f"{number(t.baseline)} {t.unit} ({t.baseline_what})",
                "-" if t.ratio is None else f"{t.ratio:.2f}x",
                t.target,
                "yes" if t.met else "NO",
            ]
            for t in targets
        ],
    )


def write_result(name: str, out: Path | None, args: argparse.Namespace, doc: dict[str, Any]) -> Path:
    """Write ``doc`` plus the machine and the options to ``out`` (default bench/results/<name>.json, or
    bench/results/quick/<name>.json for ``--quick``, so a CI-sized run never replaces the real figures)."""
    quick = bool(getattr(args, "quick", False))
    path = out or (RESULTS_DIR / "quick" if quick else RESULTS_DIR) / f"{name}.json"
    full = {
        "benchmark": name,
        "quick": quick,
        "rounds": getattr(args, "rounds", None),
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        **doc,
        "targets": [asdict(t) for t in doc.get("targets", [])],
        "code": code_version(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(full, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {path}", flush=True)
    return path


def code_version() -> dict[str, Any]:
    """The commit measured, and whether dispatcher/ or reconciler/ had uncommitted changes."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=False)
        return done.stdout.strip() if done.returncode == 0 else ""

    return {
        "commit": git("rev-parse", "--short", "HEAD") or None,
        "dirty": bool(git("status", "--porcelain", "--", "dispatcher", "reconciler", "schemas")),
    }


def median(values: Sequence[float]) -> float:
    """The median; NaN for no values."""
    return statistics.median(values) if values else float("nan")


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), linear between closest ranks; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100.0
    low = int(k)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (k - low)


@dataclass
class Rounds:
    """Per-round values of named series, with their medians."""

    values: dict[str, list[float]] = field(default_factory=dict)

    def add(self, name: str, value: float) -> None:
        self.values.setdefault(name, []).append(value)

    def median(self, name: str) -> float:
        return median(self.values.get(name, []))

    def as_json(self) -> dict[str, Any]:
        return {
            name: {"median": round(median(v), 4), "rounds": [round(x, 4) for x in v]}
            for name, v in self.values.items()
        }
