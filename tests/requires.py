"""Tests that need a piece from outside Python (a Debian package, root): skipped on a developer's machine
that lacks it, never in CI, where ``.ci/run`` installs it and a missing piece must fail the run."""

from __future__ import annotations

import os

import pytest

#: ``.ci/run`` runs with CI=true; there every piece the tests need is installed, so none may be skipped.
IN_CI = os.environ.get("CI") == "true"


def requires(present: bool, what: str) -> pytest.MarkDecorator:
    """Skip when ``what`` is missing, except in CI: there the test runs and fails on the missing piece."""
    return pytest.mark.skipif(not present and not IN_CI, reason=f"{what} is not installed here")


def require(present: bool, what: str) -> None:
    """Inside a test or fixture: skip when ``what`` is missing, fail in CI (which must provide it)."""
    if present:
        return
    if IN_CI:
        pytest.fail(f"{what} is missing in CI: .ci/run must install it")
    pytest.skip(f"{what} is not available here")
