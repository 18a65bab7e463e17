#!/usr/bin/env python3
"""Run every benchmark of SPEC section 9 and print one summary table.

    python bench/run_all.py                 # the sizes of SPEC section 9 (15 to 25 minutes on 2 cores)
    python bench/run_all.py --quick         # tiny sizes, one round each (what bench/smoke runs in CI)
    python bench/run_all.py --only ingest latency --rounds 5
    python bench/run_all.py --no-run        # only the summary of the results already in bench/results/

Each benchmark runs as its own process (its own table and progress go to this terminal) and writes its JSON
to ``--out-dir`` (default ``bench/results/``; ``bench/results/quick/`` with ``--quick``, so CI-sized runs
never replace real figures). This script then reads those files, prints the summary (what, measured,
baseline, ratio, target, met?) and writes ``summary.json`` next to them. The benchmarks measure and never
assert: a missed target is reported, not an error. The exit status is 1 only when a benchmark could not run
(crashed or timed out), so CI catches broken benchmarks without timing assertions.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common import BENCH, RESULTS_DIR, Target, exit_on_sigterm, print_targets

#: name -> (script, arguments for the SPEC section 9 sizes, arguments for --quick)
BENCHMARKS: dict[str, tuple[str, list[str], list[str]]] = {
    "throughput": ("throughput.py", [], ["--quick"]),
    "latency": ("latency.py", [], ["--quick"]),
    "isolation": ("isolation.py", [], ["--quick"]),
    "attack": ("attack.py", [], ["--quick"]),
    "ingest": ("ingest.py", [], ["--quick"]),
    "reconcile": ("reconcile.py", ["--files", "10000"], ["--files", "50", "--rounds", "1"]),
    "reload": ("reload.py", [], ["--quick"]),
    "memory": ("memory.py", [], ["--quick"]),
    "celery_peer": ("celery_peer.py", [], ["--quick"]),
    "slow_receivers": ("slow_receivers.py", [], ["--quick"]),
}


def run_one(name: str, args: argparse.Namespace, out: Path) -> tuple[int | None, float]:
    """Run one benchmark script; its exit status (None on timeout) and how long it took."""
    script, full, quick = BENCHMARKS[name]
    command = [sys.executable, str(BENCH / script), *(quick if args.quick else full), "--out", str(out)]
    if args.rounds is not None and not args.quick:
        command += ["--rounds", str(args.rounds)]
    print(f"\n=== {name}: {' '.join(command[1:])}", flush=True)
    start = time.perf_counter()
    proc = subprocess.Popen(command)
    try:
        code: int | None = proc.wait(args.timeout)
    except subprocess.TimeoutExpired:
        code = None
        print(f"=== {name}: timed out after {args.timeout:g}s; stopping it", flush=True)
    finally:
        if proc.poll() is None:
            proc.terminate()  # SIGTERM: the script's ``with`` blocks stop the processes it started
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return code, time.perf_counter() - start


def summary_rows(name: str, doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The benchmark's targets as summary rows (``bench/reconcile.py`` has its own format)."""
    if name == "reconcile":
        medians = {row["tool"]: row["median_seconds"] for row in doc["results"]}
        return [
            {
                "what": f"reconcile --check ({doc['files']} files)",
                "measured": medians["reconcile"],
                "unit": "s",
                "baseline": medians["check-jsonschema"],
                "baseline_what": "check-jsonschema",
                "ratio": doc["ratio"],
                "target": f">= {doc['target_ratio']:g}x faster",
                "met": doc["target_met"],
            }
        ]
    return list(doc["targets"])


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny sizes, one round each (for CI)")
    p.add_argument("--rounds", type=int, help="rounds for every benchmark (default: each one's own)")
    p.add_argument("--only", nargs="+", choices=list(BENCHMARKS), help="run only these benchmarks")
    p.add_argument(
        "--out-dir", type=Path, help=f"JSON results (default {RESULTS_DIR}, or its quick/ with --quick)"
    )
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds one benchmark may take at most")
    p.add_argument("--no-run", action="store_true", help="summarise the results in --out-dir, run nothing")
    args = p.parse_args(argv)
    exit_on_sigterm()
    names = args.only or list(BENCHMARKS)
    if args.out_dir is None:
        args.out_dir = RESULTS_DIR / "quick" if args.quick else RESULTS_DIR
    rows: list[dict[str, Any]] = []
    runs: dict[str, dict[str, Any]] = {}
    for name in names:
        out = args.out_dir / f"{name}.json"
        if args.no_run:
            code, seconds = (0, 0.0) if out.exists() else (None, 0.0)
        else:
            out.unlink(missing_ok=True)  # never summarise a stale result
            code, seconds = run_one(name, args, out)
            print(f"=== {name}: exit status {code}, {seconds:.0f} s", flush=True)
        runs[name] = {"exit_status": code, "seconds": round(seconds, 1), "result": str(out)}
        if code == 0 and out.exists():
            for row in summary_rows(name, json.loads(out.read_text(encoding="utf-8"))):
                rows.append({"benchmark": name, **row})

    print("\n=== summary" + (" (--quick: tiny sizes, figures mean nothing)" if args.quick else ""), end="")
    print_targets([Target.from_json(r) for r in rows])
    failed = [name for name, run in runs.items() if run["exit_status"] != 0]
    for name in failed:
        print(f"FAILED to run: {name} (exit status {runs[name]['exit_status']})")
    summary = {
        "quick": args.quick,
        "rows": rows,
        "runs": runs,
        "targets_met": sum(bool(r["met"]) for r in rows),
        "targets": len(rows),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    path = args.out_dir / "summary.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(f"\n{summary['targets_met']} of {summary['targets']} targets met; wrote {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
