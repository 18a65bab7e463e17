"""The main process's threads share one malloc arena (glibc): each arena keeps its own freed memory."""

from __future__ import annotations

import ctypes
import platform
import subprocess
import sys
from pathlib import Path

import pytest

_PROGRAM = """
import ctypes, sys, threading
from dispatcher.app import _limit_malloc_arenas
if sys.argv[1] == "limited":
    _limit_malloc_arenas()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
libc.fopen.restype = ctypes.c_void_p
libc.fclose.argtypes = [ctypes.c_void_p]
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
barrier = threading.Barrier(8)
def allocate():
    barrier.wait()  # all at once: glibc gives a thread that finds the arenas busy an arena of its own
    blocks = [libc.malloc(4096) for _ in range(2000)]
    for block in blocks:
        libc.free(block)
threads = [threading.Thread(target=allocate) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
out = libc.fopen(sys.argv[2].encode(), b"w")
libc.malloc_info(0, out)
libc.fclose(out)
"""


def _arenas(tmp_path: Path, mode: str) -> int:
    report = tmp_path / f"{mode}.xml"
    subprocess.run([sys.executable, "-c", _PROGRAM, mode, str(report)], check=True, timeout=60)
    return report.read_text().count("<heap nr=")


@pytest.mark.skipif(
    platform.system() != "Linux" or not hasattr(ctypes.CDLL(None), "malloc_info"), reason="glibc only"
)
def test_threads_of_the_main_process_share_one_malloc_arena(tmp_path: Path) -> None:
    """After ``_limit_malloc_arenas``, eight threads allocating at once use the one arena glibc reports;
    without it they spread over several (the memory each keeps is what the limit saves)."""
    assert _arenas(tmp_path, "limited") == 1
    assert _arenas(tmp_path, "default") > 1
