from __future__ import annotations

from tests.e2e.conftest import config_dir, processes, receiver

__all__ = ["config_dir", "processes", "receiver"]
