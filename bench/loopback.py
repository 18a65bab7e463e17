"""The loopback helpers the benchmarks share with the tests (``tests/loopback.py``), for scripts run as
``python bench/NAME.py``.

Such a script has ``bench/`` on ``sys.path`` but not the checkout, so this module adds the checkout (the
benchmarks only ever run from one) and imports the helpers from there: one copy of free ports, deadlines,
waiting for a port or a socket, and stopping a child process.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.loopback import (  # noqa: E402 - importable only once the checkout is on sys.path
    BIN,
    LOOPBACK,
    LoopbackListener,
    NotReady,
    free_port,
    http_get,
    loopback_url,
    poll_until,
    stop_process,
    wait_port,
    wait_socket,
)

__all__ = [
    "BIN",
    "LOOPBACK",
    "ROOT",
    "LoopbackListener",
    "NotReady",
    "free_port",
    "http_get",
    "loopback_url",
    "poll_until",
    "stop_process",
    "wait_port",
    "wait_socket",
]
