"""The exit codes of ``dispatch``: one table, used by every command (SPEC section 3).

======  ==================  =============================================================================
code    name                meaning
======  ==================  =============================================================================
0       OK                  done: ``run`` stopped on SIGTERM/SIGINT or at the end of ``--stdin``; every
                            line ``publish`` sent was accepted; ``retry`` requeued every ID it was given
1       FAILURE             the command could not do what was asked: ``run`` could not start (config,
                            store, socket path or state directory); ``publish`` had a line rejected or
                            unacknowledged; no store, or no such ID, for ``deliveries``/``callbacks``;
                            ``retry`` found an ID missing or already delivered; ``receive --strict`` saw a
                            bad signature
2       USAGE               bad options or arguments (click's usage errors); ``receive`` also when its
                            port cannot be bound
3       UNREACHABLE         ``publish``: no dispatcher answers on the socket, or the connection broke
70      INTERNAL_FAILURE    ``run``: an internal thread or child died (EX_SOFTWARE in sysexits.h); systemd
                            or Kubernetes restarts it, nothing acknowledged is lost
======  ==================  =============================================================================

``click.ClickException`` (exit 1) and ``click.UsageError`` (exit 2) keep click's own codes, which are the
table's FAILURE and USAGE.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """What ``dispatch`` exits with; see the module docstring for when."""

    OK = 0
    FAILURE = 1
    USAGE = 2
    UNREACHABLE = 3
    INTERNAL_FAILURE = 70
