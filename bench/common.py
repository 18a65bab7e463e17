"""Everything the benchmarks share, under one name: ``from common import Dispatcher, parser, ...``.

The pieces live by what they hold: ``loopback`` (free ports, deadlines, waiting for a port or a socket,
stopping a child; shared with the tests as ``tests/loopback.py``), ``report`` (command line, statistics,
tables, the JSON results), ``workloads`` (webhook files, events, publishing), ``processes`` (the dispatcher,
/proc readings, a look at its store) and ``receivers`` (nginx, the Python receiver, listeners on loopback).
A benchmark may import from those directly; this module keeps ``from common import ...`` working.

Everything here talks to 127.0.0.1 or to Unix sockets in the benchmark's own temporary directory, and every
process it starts is stopped by ``close()`` (each class is a context manager). Webhook files generated here
only ever point at ``http://127.0.0.1:PORT/...``, and the dispatcher always runs with
``--allow-cidr 127.0.0.1/32``.
"""

from __future__ import annotations

from loopback import BIN, LOOPBACK, LoopbackListener, free_port, http_get, loopback_url, poll_until, wait_port
from processes import ALLOW_CIDR, STORE_FILE, ChildProcess, Dispatcher, StoreWatch, console_script
from receivers import (
    Blackhole,
    DelayedNginx,
    Nginx,
    PythonDelayedReceiver,
    PythonReceiver,
    add_delayed_option,
    add_receiver_option,
    delayed_receiver,
    fast_receiver,
    nginx_binary,
)
from report import (
    BENCH,
    RESULTS_DIR,
    ROOT,
    Rounds,
    Target,
    code_version,
    exit_on_sigterm,
    median,
    number,
    parser,
    percentile,
    print_table,
    print_targets,
    progress,
    write_result,
)
from workloads import (
    SECRET_ENV,
    SECRET_VALUE,
    PublishResult,
    event_line,
    one_webhook_config,
    publish_pipelined,
    webhook_yaml,
    write_atomic,
)

__all__ = [
    "ALLOW_CIDR",
    "BENCH",
    "BIN",
    "LOOPBACK",
    "RESULTS_DIR",
    "ROOT",
    "SECRET_ENV",
    "SECRET_VALUE",
    "STORE_FILE",
    "Blackhole",
    "ChildProcess",
    "DelayedNginx",
    "Dispatcher",
    "LoopbackListener",
    "Nginx",
    "PublishResult",
    "PythonDelayedReceiver",
    "PythonReceiver",
    "Rounds",
    "StoreWatch",
    "Target",
    "add_delayed_option",
    "add_receiver_option",
    "code_version",
    "console_script",
    "delayed_receiver",
    "event_line",
    "exit_on_sigterm",
    "fast_receiver",
    "free_port",
    "http_get",
    "loopback_url",
    "median",
    "nginx_binary",
    "number",
    "one_webhook_config",
    "parser",
    "percentile",
    "poll_until",
    "print_table",
    "print_targets",
    "progress",
    "publish_pipelined",
    "wait_port",
    "webhook_yaml",
    "write_atomic",
    "write_result",
]
