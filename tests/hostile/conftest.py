from __future__ import annotations

from tests.e2e.conftest import config_dir, processes, receiver
from tests.pg import pg_cluster, pg_url

__all__ = ["config_dir", "pg_cluster", "pg_url", "processes", "receiver"]
