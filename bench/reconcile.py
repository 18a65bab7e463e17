#!/usr/bin/env python3
"""Benchmark: ``reconcile --check`` against ``check-jsonschema`` on the same generated files (SPEC section 9).

    python bench/reconcile.py --files 10000 --rounds 3

Generates N realistic webhook files (fields varied the way real teams vary them) into a temporary
``webhooks.d/``, then times whole processes, as CI would run them, interleaving the two tools round by round
so machine noise hits both alike:

- ``reconcile --check DIR`` (the installed console script: startup, loading, validation, cross-file rules and
  the routing table);
- ``check-jsonschema --schemafile schemas/webhook.v1.json FILE...`` (schema validation only, one process; the
  paths are passed relative to the directory so 10,000 of them fit in one argument list).

Prints a table (files, tool, median seconds, files/s, ratio) and writes ``bench/results/reconcile.json``. The
target is reconcile >= 10x faster; the script reports whether it is met and exits 0 either way (it measures,
it does not assert). It exits 1 when a tool is missing or does not accept the generated files, since the
figures would then compare different work.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "schemas" / "webhook.v1.json"
RESULTS = ROOT / "bench" / "results" / "reconcile.json"
TARGET_RATIO = 10.0

_EVENT_TYPES = (
    "[package.created]",
    '[package.created, "package.status.*"]',
    "package.status.shipped",
    '"shipment.**"',
    "[transfer.status.in_transit, transfer.status.created]",
    "stock_location.updated",
    '["package.status.*", shipment.created]',
)
_RETRIES = (
    "",
    "  retry_countdown_config:\n    choice: exponential\n    kwargs: {base: 2, factor: 30, limit: 3600}\n"
    "    max_attempts: 12\n",
    "  retry_countdown_config:\n    choice: fixed\n    kwargs: {seconds: 60}\n    max_attempts: 5\n",
    "  retry_countdown_config:\n    choice: linear\n    kwargs: {base: 30, limit: 600}\n"
    "    max_attempts: 8\n",
    "  retry_countdown_config:\n    choice: schedule\n    kwargs: {delays: [5, 60, 300, 1800]}\n",
    "  retry_countdown_config:\n    choice: random\n    kwargs: {min_value: 10, max_value: 120}\n"
    "    max_attempts: 4\n",
)
_TEAMS = ("fulfilment", "finance", "carriers", "marketplaces", "warehouse")


def webhook_yaml(i: int) -> str:
    """One realistic webhook file; ``i`` picks the variant of every optional part."""
    name = f"hook-{i:05d}"
    env = "WEBHOOK_" + name.upper().replace("-", "_")
    secret = f"{{env: {env}_SECRET}}" if i % 3 else f"{{file: /run/secrets/{name}}}"
    headers = [] if i % 4 == 0 else ["X-Source: oms", f"X-Tenant: tenant-{i % 50}"]
    if i % 5 == 1:
        headers.append(f"X-Api-Key: {{env: {env}_TOKEN}}")
    header_block = "".join(f"\n    {h}" for h in headers) or " {}"
    config = [f"    timeout: {5 + i % 25}"]
    if i % 6 == 2:
        config.append(
            f"    auth: {{type: basic, username: oms-{i % 9}, password: {{file: /run/secrets/{name}-pw}}}}"
        )
    if i % 4 == 3:
        config.append(f"    match: {{channel_id: {i % 7}}}")
    callback = (
        "  callback:\n    url: https://oms.internal/webhook-outcomes\n    on: [dead, failed]\n"
        if i % 7 == 0
        else ""
    )
    return (
        "# yaml-language-server: $schema=../schemas/webhook.v1.json\n"
        "apiVersion: webhooks/v1\n"
        "kind: Webhook\n"
        "metadata:\n"
        f"  name: {name}\n"
        f'  labels: {{team: {_TEAMS[i % len(_TEAMS)]}, tier: "{i % 3}"}}\n'
        "spec:\n"
        f"  target_url: https://partner-{i % 997}.example.com/hooks/oms/{name}\n"
        f"  event_type: {_EVENT_TYPES[i % len(_EVENT_TYPES)]}\n"
        f"  status: {'inactive' if i % 11 == 0 else 'active'}\n"
        f"  secret_key: {secret}\n"
        f"  additional_headers:{header_block}\n"
        "  config:\n" + "\n".join(config) + "\n" + _RETRIES[i % len(_RETRIES)] + callback
    )


def generate(directory: Path, count: int) -> list[str]:
    directory.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(count):
        name = f"hook-{i:05d}.yaml"
        (directory / name).write_text(webhook_yaml(i), encoding="utf-8")
        names.append(name)
    return names


def _chunks(names: list[str]) -> list[list[str]]:
    """One argument list when it fits (it does for 10,000 short names); otherwise as few chunks as needed."""
    limit = os.sysconf("SC_ARG_MAX") // 2 - sum(len(k) + len(v) + 2 for k, v in os.environ.items())
    chunks: list[list[str]] = [[]]
    size = 0
    for name in names:
        if chunks[-1] and size + len(name) + 1 > limit:
            chunks.append([])
            size = 0
        chunks[-1].append(name)
        size += len(name) + 1
    return chunks


def timed(commands: Sequence[Sequence[str]], cwd: Path) -> tuple[float, list[int], str]:
    """Wall time of running the commands one after the other; their exit codes; the first failure's output."""
    codes: list[int] = []
    failure = ""
    start = time.perf_counter()
    for command in commands:
        done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
        codes.append(done.returncode)
        if done.returncode and not failure:
            failure = (done.stdout + done.stderr)[-2000:]
    return time.perf_counter() - start, codes, failure


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=10_000, help="number of webhook files (default 10000)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per tool; the median counts")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"JSON results (default {RESULTS})")
    args = parser.parse_args(argv)
    if args.files < 1 or args.rounds < 1:
        parser.error("--files and --rounds must be at least 1")

    bindir = Path(sys.executable).parent  # the venv's bin: the installed console scripts
    tools = {"reconcile": bindir / "reconcile", "check-jsonschema": bindir / "check-jsonschema"}
    missing = [str(path) for path in [*tools.values(), SCHEMA] if not path.exists()]
    if missing:
        print(f"bench/reconcile.py: not found: {', '.join(missing)}", file=sys.stderr)
        return 1

    with tempfile.TemporaryDirectory(prefix="reconcile-bench-") as tmp:
        directory = Path(tmp) / "webhooks.d"
        names = generate(directory, args.files)
        commands = {
            "reconcile": [[str(tools["reconcile"]), "--check", "."]],
            "check-jsonschema": [
                [str(tools["check-jsonschema"]), "--schemafile", str(SCHEMA), *chunk]
                for chunk in _chunks(names)
            ],
        }
        seconds: dict[str, list[float]] = {tool: [] for tool in commands}
        for round_no in range(args.rounds):
            for tool, tool_commands in commands.items():
                elapsed, codes, failure = timed(tool_commands, directory)
                if any(codes):
                    print(f"{tool} rejected the generated files (exit {codes}):\n{failure}", file=sys.stderr)
                    return 1
                seconds[tool].append(elapsed)
                print(f"round {round_no + 1}/{args.rounds}: {tool} {elapsed:.3f} s", file=sys.stderr)

    medians = {tool: statistics.median(values) for tool, values in seconds.items()}
    ratio = medians["check-jsonschema"] / medians["reconcile"]
    met = ratio >= TARGET_RATIO
    rows = [
        {
            "tool": tool,
            "median_seconds": round(medians[tool], 4),
            "seconds": [round(s, 4) for s in seconds[tool]],
            "files_per_second": round(args.files / medians[tool], 1),
            "ratio": round(medians["check-jsonschema"] / medians[tool], 2),
            "processes": len(commands[tool]),
        }
        for tool in seconds
    ]
    print(f"\n{'files':>7}  {'tool':<17} {'median s':>9} {'files/s':>10} {'ratio':>7}")
    for row in rows:
        print(
            f"{args.files:>7}  {row['tool']:<17} {row['median_seconds']:>9.3f} "
            f"{row['files_per_second']:>10.1f} {row['ratio']:>6.2f}x"
        )
    verdict = "met" if met else "NOT met"
    print(f"\nreconcile is {ratio:.2f}x faster than check-jsonschema: target >= {TARGET_RATIO:g}x {verdict}.")

    result = {
        "benchmark": "reconcile",
        "files": args.files,
        "rounds": args.rounds,
        "results": rows,
        "ratio": round(ratio, 2),
        "target_ratio": TARGET_RATIO,
        "target_met": met,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
