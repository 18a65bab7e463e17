"""The SQLite store's DDL, versioned with ``PRAGMA user_version`` and migrated in place.

``BASE_SCHEMA`` is version 1 (the first released layout); ``MIGRATIONS[i]`` takes a store from version
``i + 1`` to ``i + 2``. A new store runs all of them; an older one runs those it lacks, in one write
transaction with the new ``user_version`` (SQLite DDL is transactional: a crash leaves the old version).
A store with a higher version than ``SCHEMA_VERSION`` is refused: this code cannot know what it means.
Migrations only add: every pending delivery is kept.
"""

from __future__ import annotations

# The partial index ``deliveries_due`` is only used when a query repeats its WHERE terms verbatim.
DUE_CONDITION = "status IN ('pending', 'failed') AND held = 0 AND lease_id IS NULL"
CALLBACK_DUE_CONDITION = "status IN ('pending', 'failed') AND lease_id IS NULL"

BASE_SCHEMA = f"""
CREATE TABLE events (
    id INTEGER PRIMARY KEY,
    uuid NOT NULL UNIQUE,  -- see _uuid_key
    type TEXT NOT NULL,
    created_at REAL NOT NULL,
    body BLOB NOT NULL
);
CREATE TABLE deliveries (
    id INTEGER PRIMARY KEY,
    event_id INTEGER NOT NULL REFERENCES events (id),
    webhook TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'failed', 'delivered', 'dead')),
    held INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL CHECK (status NOT IN ('pending', 'failed') OR next_attempt_at IS NOT NULL),
    lease_id INTEGER,
    lease_expires_at REAL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    last_status_code INTEGER,
    last_error TEXT,
    dead_reason TEXT
);
CREATE UNIQUE INDEX deliveries_event ON deliveries (event_id, webhook);
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE {DUE_CONDITION};
CREATE INDEX deliveries_leased ON deliveries (lease_expires_at) WHERE lease_id IS NOT NULL;
CREATE INDEX deliveries_status ON deliveries (status, created_at);
CREATE INDEX deliveries_webhook ON deliveries (webhook, status, created_at);
CREATE INDEX deliveries_created ON deliveries (created_at);
CREATE TABLE attempts (
    id INTEGER PRIMARY KEY,
    delivery_id INTEGER NOT NULL REFERENCES deliveries (id),
    number INTEGER NOT NULL,
    started_at REAL NOT NULL,
    duration_seconds REAL NOT NULL,
    status_code INTEGER,
    error TEXT,
    response_headers TEXT NOT NULL,
    response_excerpt TEXT NOT NULL,
    UNIQUE (delivery_id, number)
);
CREATE TABLE counters (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    next_event_id INTEGER NOT NULL,
    next_delivery_id INTEGER NOT NULL,
    next_lease_id INTEGER NOT NULL
);
INSERT INTO counters VALUES (1, 1, 1, 1);
"""

# Version 2: durable callbacks. A callback row is inserted in the transaction that records the outcome it
# reports and is leased, attempted and retried like a delivery. ``delivery_id`` is not a foreign key: a
# delivered delivery may be pruned before its callback is.
_CALLBACKS = f"""
CREATE TABLE callbacks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused after a prune
    delivery_id INTEGER NOT NULL,
    webhook TEXT NOT NULL,
    url TEXT NOT NULL,
    label TEXT NOT NULL,
    payload BLOB NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'failed', 'delivered', 'dead')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL CHECK (status NOT IN ('pending', 'failed') OR next_attempt_at IS NOT NULL),
    lease_id INTEGER,
    lease_expires_at REAL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    last_status_code INTEGER,
    last_error TEXT,
    dead_reason TEXT
);
CREATE INDEX callbacks_due ON callbacks (next_attempt_at) WHERE {CALLBACK_DUE_CONDITION};
CREATE INDEX callbacks_leased ON callbacks (lease_expires_at) WHERE lease_id IS NOT NULL;
CREATE INDEX callbacks_created ON callbacks (created_at);
CREATE INDEX callbacks_status ON callbacks (status, updated_at);
CREATE INDEX callbacks_delivery ON callbacks (delivery_id);
CREATE TABLE callback_attempts (
    id INTEGER PRIMARY KEY,
    callback_id INTEGER NOT NULL REFERENCES callbacks (id),
    number INTEGER NOT NULL,
    started_at REAL NOT NULL,
    duration_seconds REAL NOT NULL,
    status_code INTEGER,
    error TEXT,
    response_headers TEXT NOT NULL,
    response_excerpt TEXT NOT NULL,
    UNIQUE (callback_id, number)
);
"""

# Version 3: the due deliveries by webhook. When the scheduler passes over the webhooks of full endpoints
# (a dead endpoint's backlog), the lease finds the other webhooks' due work with one seek per webhook in
# this index instead of stepping over every due delivery of the skipped ones (a million of them cost a
# fifth of a core).
_DUE_BY_WEBHOOK = f"""
CREATE INDEX deliveries_due_webhook ON deliveries (webhook, next_attempt_at) WHERE {DUE_CONDITION};
"""

MIGRATIONS: tuple[str, ...] = (_CALLBACKS, _DUE_BY_WEBHOOK)
SCHEMA_VERSION = 1 + len(MIGRATIONS)


def statements(script: str) -> list[str]:
    """The statements of a DDL script (none of ours has a ``;`` inside a literal)."""
    return [statement for statement in script.split(";") if statement.strip()]
