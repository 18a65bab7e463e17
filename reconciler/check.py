"""One ``reconcile`` run: load the tree, plan against REF and test a route if asked, report, exit code.

The CLI builds a ``Checker`` from its options and returns ``Checker.run()``. Collaborators (the tree loader,
the baseline loader, the output stream) are constructor arguments so tests can swap them.

Exit codes (SPEC section 2; terraform-style ``--detailed-exitcode``)::

    0  valid (warnings allowed unless --strict)
    1  invalid: at least one error, or a warning under --strict
    2  valid, and the plan against REF is not empty (only with --detailed-exitcode)
    3  usage or internal error (also: REF names neither a directory nor a git revision)
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any, TextIO

from reconciler.errors import ReconcilerError
from reconciler.explain import explain_route
from reconciler.gitrev import Baseline, load_baseline
from reconciler.limits import DEFAULT_LIMITS, Limits
from reconciler.loader import TreeLoader, TreeResult, load_tree
from reconciler.model import Webhook
from reconciler.plan import build_plan
from reconciler.report import RENDERERS, PlanSection, Report
from reconciler.routing import build_routing_table
from reconciler.secretcheck import add_secret_findings
from reconciler.secretsources import SecretSources


class ExitCode(IntEnum):
    OK = 0
    INVALID = 1
    CHANGES = 2
    ERROR = 3


@dataclass(frozen=True)
class CheckOptions:
    directory: Path
    output_format: str = "text"  # a key of reconciler.report.RENDERERS
    strict: bool = False
    against: str | None = None
    detailed_exitcode: bool = False
    route_event: str | None = None
    route_filter: Mapping[str, Any] | None = None  # None: the event carries no filter
    limits: Limits = DEFAULT_LIMITS  # per-file budgets (--max-file-bytes)


def exit_code(report: Report, *, detailed: bool) -> ExitCode:
    """The exit code for a rendered report (pure)."""
    if not report.passed:
        return ExitCode.INVALID
    plan = report.plan.plan if report.plan is not None else None
    if detailed and plan is not None and not plan.is_empty:
        return ExitCode.CHANGES
    return ExitCode.OK


class Checker:
    """One run of ``reconcile`` over one directory, with its collaborators injected."""

    def __init__(
        self,
        options: CheckOptions,
        *,
        out: TextIO | None = None,
        err: TextIO | None = None,
        load: Callable[[Path], TreeResult] | None = None,  # default: load_tree with options.limits
        load_against: Callable[[str, Path], Baseline] = load_baseline,
    ) -> None:
        self.options = options
        self._out = out if out is not None else sys.stdout
        self._err = err if err is not None else sys.stderr
        self._load = load
        self._load_against = load_against

    def run(self) -> int:
        """Check, print the report to ``out``, and return the exit code; expected failures go to ``err``."""
        try:
            report = self.build_report()
        except ReconcilerError as exc:
            self._err.write(f"reconcile: {exc}\n")
            return ExitCode.ERROR
        self._out.write(RENDERERS[self.options.output_format](report))
        self._out.flush()
        return exit_code(report, detailed=self.options.detailed_exitcode)

    def build_report(self) -> Report:
        """Load and check the tree, then add the plan and route test the options ask for."""
        opts = self.options
        tree = self._load(opts.directory) if self._load else load_tree(opts.directory, opts.limits)
        # Build the routing table exactly as the dispatcher would for a valid tree (part of --check); for an
        # invalid tree, the valid documents still answer a route test.
        table = tree.table() if tree.valid else build_routing_table(tree.webhooks, tree.revision)
        plan = self._plan(tree) if opts.against is not None else None
        route = explain_route(table, opts.route_event, opts.route_filter) if opts.route_event else None
        return Report(tree, strict=opts.strict, plan=plan, route=route)

    def _plan(self, tree: TreeResult) -> PlanSection:
        assert self.options.against is not None
        baseline = self._load_against(self.options.against, self.options.directory)
        # No plan for a tree with errors: its invalid documents are missing, so the plan would show them as
        # removed. Warnings do not block the plan.
        plan = build_plan(_by_name(baseline.tree.webhooks), _by_name(tree.webhooks)) if tree.valid else None
        return PlanSection(baseline.ref, baseline.kind, baseline.commit, baseline.tree.error_count, plan)


def watch(
    options: CheckOptions,
    out: TextIO,
    stop: threading.Event,
    debounce_seconds: float = 0.2,
    sources: SecretSources | None = None,
) -> int:
    """``reconcile --watch``: check now and after every change settles; print the diagnostics and, for a valid
    tree, the plan against the last good tree. Runs until ``stop`` is set (Ctrl-C in the CLI).

    The secret-source rules apply as in ``--check``, judged by ``sources`` (``--secrets-dir``,
    ``--secret-env``; None: the defaults for the environment)."""
    from reconciler.watch import ConfigWatcher  # watchdog only when watching

    policy = sources if sources is not None else SecretSources.build()
    loader = TreeLoader(options.directory, options.limits)  # incremental: only changed files are parsed again
    render = RENDERERS[options.output_format]
    last_good: TreeResult | None = None
    changed = threading.Event()

    def check_once() -> None:
        nonlocal last_good
        tree = add_secret_findings(loader.load(), policy)
        section = None
        if last_good is not None:
            plan = build_plan(_by_name(last_good.webhooks), _by_name(tree.webhooks)) if tree.valid else None
            section = PlanSection("the last good tree", "watch", None, 0, plan)
        stamp = time.strftime("%H:%M:%S")
        out.write(f"== {stamp} {tree.directory} {tree.revision[:19]}\n")
        out.write(render(Report(tree, strict=options.strict, plan=section)))
        out.flush()
        if tree.valid:
            last_good = tree

    # Watch first, then check: a change made while the first check runs is not missed.
    watcher = ConfigWatcher(options.directory, changed.set, debounce_seconds=debounce_seconds)
    watcher.start()
    check_once()
    try:
        while not stop.is_set():
            if changed.wait(0.1):
                changed.clear()
                check_once()
    finally:
        watcher.close()
    return ExitCode.OK


def _by_name(webhooks: Iterable[Webhook]) -> dict[str, Webhook]:
    return {hook.name: hook for hook in webhooks}
