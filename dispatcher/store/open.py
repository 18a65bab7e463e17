"""Which store a command uses: ``--store URL``, else ``DISPATCH_STORE``, else the SQLite file under
``--state``.

``sqlite:///PATH`` names a SQLite file (one dispatcher at a time: a lock file beside it); ``postgresql://``
a PostgreSQL database several dispatchers may share. The URL is only ever shown redacted.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from dispatcher.errors import StoreError
from dispatcher.store.base import Store
from dispatcher.store.url import StoreUrl, parse

ENV = "DISPATCH_STORE"


def choose(option: str | None, environ: Mapping[str, str]) -> StoreUrl | None:
    """The store URL from the option or the environment (None: the default SQLite file under --state)."""
    text = option if option else environ.get(ENV, "").strip() or None
    return None if text is None else parse(text)


@contextlib.contextmanager
def open_store(
    url: StoreUrl | None,
    default_path: Path,
    *,
    lock: Callable[[Path], contextlib.AbstractContextManager[None]] | None = None,
    must_exist: bool = False,
) -> Iterator[Store]:
    """Open the chosen store. ``lock(directory)``: held around a SQLite store (one dispatcher per file);
    ``must_exist``: a SQLite file that is not there is an error instead of a new store (inspection tools)."""
    if url is not None and url.kind == "postgresql":
        from dispatcher.store.postgres import PostgresStore  # only then: psycopg loads libpq

        with PostgresStore(url.url) as pg:
            yield pg
        return
    path = default_path if url is None or url.path is None else url.path
    if must_exist and not path.exists():
        raise StoreError(f"no store at {path} (is --state or --store right?)")
    from dispatcher.store.sqlite import SQLiteStore

    with contextlib.ExitStack() as stack:
        if lock is not None:
            stack.enter_context(lock(path.parent))
        yield stack.enter_context(SQLiteStore(path))


def describe(store: Store, now: float) -> dict[str, Any]:
    """For /status: the backend, where it is (redacted), and on a shared store how many dispatchers hold
    leases right now."""
    name = getattr(store, "name", None)
    if name is not None and hasattr(store, "holders"):
        return {"backend": "postgresql", "url": name, "lease_holders": holders(store, now)}
    path = getattr(store, "path", None)
    if path is not None:
        return {"backend": "sqlite", "url": f"sqlite:///{Path(path).resolve()}"}
    return {"backend": type(store).__name__}


def holders(store: Store, now: float) -> int | None:
    """How many dispatchers hold live leases on a shared store (None on a store of one dispatcher)."""
    count = getattr(store, "holders", None)
    return None if count is None else int(count(now))


def backend(store: Store) -> str:
    """``postgresql``, ``sqlite`` or ``memory``: the label of ``dispatch_store_info``."""
    if hasattr(store, "holders"):
        return "postgresql"
    return "sqlite" if hasattr(store, "path") else "memory"
