"""Test-only launcher: ``python fault_launcher.py MODULE:CLASS.METHOD [dispatch args...]``.

Replaces one method with one that raises ``RuntimeError("injected fault")`` (an internal thread dying of a
bug), then runs the real ``dispatch`` command line in this process. With ``HOLD_STOP_UNTIL=PATH`` in the
environment, ``Engine.stop`` waits (at most 10 s) for PATH to exist, so a test can read ``/healthz`` while
the dying process shuts down. Production code has no hooks for any of this.
"""

from __future__ import annotations

import importlib
import os
import sys
import time
from typing import Any

#: Stands for what an exception message could carry (an event, a secret): it must never be shown.
MESSAGE_MARKER = "zq-private-7731"


def _raise(*_args: Any, **_kwargs: Any) -> Any:
    raise RuntimeError(f"injected fault: {MESSAGE_MARKER}")


def main() -> None:
    target, args = sys.argv[1], sys.argv[2:]
    module_name, _, attribute = target.partition(":")
    owner_name, _, method = attribute.partition(".")
    owner = getattr(importlib.import_module(module_name), owner_name)
    setattr(owner, method, _raise)
    hold = os.environ.get("HOLD_STOP_UNTIL")
    if hold:
        from dispatcher.engine import Engine

        real_stop = Engine.stop

        def stop(self: Engine, grace_seconds: float = 60.0) -> None:
            deadline = time.monotonic() + 10.0
            while not os.path.exists(hold) and time.monotonic() < deadline:
                time.sleep(0.02)
            real_stop(self, grace_seconds)

        Engine.stop = stop  # type: ignore[method-assign]
    from dispatcher.cli import main as dispatch

    sys.argv = ["dispatch", *args]
    dispatch()


if __name__ == "__main__":
    main()
