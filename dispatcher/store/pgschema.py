"""The PostgreSQL store's DDL, versioned in ``dispatch_schema`` and migrated by the dispatcher at start-up.

``MIGRATIONS[i]`` takes a store from version ``i`` to ``i + 1`` (version 0: an empty database). Several
dispatchers may start at once: the migration runs in one transaction under a transaction-scoped advisory
lock, and the version is read again once the lock is held, so exactly one of them migrates and the others
see the result. A store with a higher version than this code knows is refused. Migrations only add.

Table settings, chosen for a queue whose rows are updated a few times each and then deleted by the prune:

- ``deliveries`` and ``callbacks`` have ``fillfactor = 70``: a lease, an outcome and a reclaim update a row
  in place on the same page (a HOT update, no new index entries) while it has free room, and their columns
  touched by updates (lease, status, times) are in partial indexes only where they must be.
- autovacuum runs on them after 1 % (not 20 %) of rows changed, and analyse after 2 %, without cost delay:
  a queue table at millions of rows would otherwise carry millions of dead tuples between vacuums and the
  due-work index scan would step over them.
- ``delivery_counts`` holds a per-status count maintained by statement-level triggers, spread over 16
  shards per status so that concurrent transactions rarely wait on one counter row: ``counts()`` sums at
  most 64 rows instead of counting millions of deliveries.
"""

from __future__ import annotations

#: The advisory lock taken around migrations (an arbitrary 64-bit constant: "dispatch" schema).
MIGRATION_LOCK = 0x64697370_61746368 & 0x7FFF_FFFF_FFFF_FFFF

DUE = "status IN ('pending', 'failed') AND NOT held AND lease_id IS NULL"
CALLBACK_DUE = "status IN ('pending', 'failed') AND lease_id IS NULL"

_CHURN = (
    "fillfactor = 70, autovacuum_vacuum_scale_factor = 0.01, autovacuum_analyze_scale_factor = 0.02,"
    " autovacuum_vacuum_cost_delay = 0"
)

_V1 = f"""
CREATE TABLE events (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    uuid TEXT NOT NULL UNIQUE,
    type TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    body BYTEA NOT NULL
);
CREATE INDEX events_created ON events (created_at);
CREATE TABLE deliveries (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id BIGINT NOT NULL REFERENCES events (id),
    webhook TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'failed', 'delivered', 'dead')),
    held BOOLEAN NOT NULL DEFAULT FALSE,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at DOUBLE PRECISION
        CHECK (status NOT IN ('pending', 'failed') OR next_attempt_at IS NOT NULL),
    lease_id BIGINT,
    lease_expires_at DOUBLE PRECISION,  -- the database's clock (see postgres.py)
    holder TEXT,  -- the dispatcher holding the lease (for /status: how many hold leases)
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    last_status_code INTEGER,
    last_error TEXT,
    dead_reason TEXT
) WITH ({_CHURN});
CREATE UNIQUE INDEX deliveries_event ON deliveries (event_id, webhook);
CREATE INDEX deliveries_due ON deliveries (next_attempt_at, id) WHERE {DUE};
CREATE INDEX deliveries_leased ON deliveries (lease_expires_at) WHERE lease_id IS NOT NULL;
CREATE INDEX deliveries_status ON deliveries (status, created_at);
CREATE INDEX deliveries_webhook ON deliveries (webhook, status, created_at);
CREATE INDEX deliveries_created ON deliveries (created_at);
CREATE TABLE attempts (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    delivery_id BIGINT NOT NULL REFERENCES deliveries (id),
    number INTEGER NOT NULL,
    started_at DOUBLE PRECISION NOT NULL,
    duration_seconds DOUBLE PRECISION NOT NULL,
    status_code INTEGER,
    error TEXT,
    response_headers TEXT NOT NULL,
    response_excerpt TEXT NOT NULL,
    UNIQUE (delivery_id, number)
);
CREATE TABLE callbacks (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    delivery_id BIGINT NOT NULL,
    webhook TEXT NOT NULL,
    url TEXT NOT NULL,
    label TEXT NOT NULL,
    payload BYTEA NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'failed', 'delivered', 'dead')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at DOUBLE PRECISION
        CHECK (status NOT IN ('pending', 'failed') OR next_attempt_at IS NOT NULL),
    lease_id BIGINT,
    lease_expires_at DOUBLE PRECISION,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    last_status_code INTEGER,
    last_error TEXT,
    dead_reason TEXT
) WITH ({_CHURN});
CREATE INDEX callbacks_due ON callbacks (next_attempt_at, id) WHERE {CALLBACK_DUE};
CREATE INDEX callbacks_leased ON callbacks (lease_expires_at) WHERE lease_id IS NOT NULL;
CREATE INDEX callbacks_created ON callbacks (created_at);
CREATE INDEX callbacks_status ON callbacks (status, updated_at);
CREATE INDEX callbacks_delivery ON callbacks (delivery_id);
CREATE TABLE callback_attempts (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    callback_id BIGINT NOT NULL REFERENCES callbacks (id),
    number INTEGER NOT NULL,
    started_at DOUBLE PRECISION NOT NULL,
    duration_seconds DOUBLE PRECISION NOT NULL,
    status_code INTEGER,
    error TEXT,
    response_headers TEXT NOT NULL,
    response_excerpt TEXT NOT NULL,
    UNIQUE (callback_id, number)
);
CREATE SEQUENCE lease_tokens;
CREATE TABLE endpoint_health (
    endpoint TEXT PRIMARY KEY,
    healthy BOOLEAN NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE delivery_counts (
    status TEXT NOT NULL,
    shard SMALLINT NOT NULL,
    n BIGINT NOT NULL,
    PRIMARY KEY (status, shard)
);
CREATE FUNCTION delivery_counts_apply() RETURNS trigger LANGUAGE plpgsql AS $body$
DECLARE
    my_shard SMALLINT := pg_backend_pid() % 16;
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO delivery_counts AS c (status, shard, n)
            SELECT status, my_shard, count(*) FROM new_rows GROUP BY status
            ON CONFLICT (status, shard) DO UPDATE SET n = c.n + EXCLUDED.n;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO delivery_counts AS c (status, shard, n)
            SELECT status, my_shard, -count(*) FROM old_rows GROUP BY status
            ON CONFLICT (status, shard) DO UPDATE SET n = c.n + EXCLUDED.n;
    ELSE
        INSERT INTO delivery_counts AS c (status, shard, n)
            SELECT status, my_shard, sum(delta) FROM (
                SELECT status, 1 AS delta FROM new_rows
                UNION ALL SELECT status, -1 FROM old_rows) AS changes
            GROUP BY status HAVING sum(delta) <> 0
            ON CONFLICT (status, shard) DO UPDATE SET n = c.n + EXCLUDED.n;
    END IF;
    RETURN NULL;
END
$body$;
CREATE TRIGGER delivery_counts_insert AFTER INSERT ON deliveries
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION delivery_counts_apply();
CREATE TRIGGER delivery_counts_update AFTER UPDATE ON deliveries
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION delivery_counts_apply();
CREATE TRIGGER delivery_counts_delete AFTER DELETE ON deliveries
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION delivery_counts_apply();
"""

#: Each entry is one script; ``$body$``-quoted function bodies are sent with their script whole.
MIGRATIONS: tuple[str, ...] = (_V1,)
SCHEMA_VERSION = len(MIGRATIONS)
