"""The index's tables, the same on SQLite and PostgreSQL except for the auto-numbered keys."""

from __future__ import annotations

# BIGINT and DOUBLE PRECISION on both: variant versions are nanosecond clocks, and PostgreSQL's
# INTEGER and REAL are 32-bit. SQLite reads both names as its 64-bit INTEGER and REAL.
_TABLES = """
CREATE TABLE IF NOT EXISTS models (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    meta TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    model_id TEXT PRIMARY KEY REFERENCES models(id) ON DELETE CASCADE,
    state TEXT NOT NULL,
    stage TEXT,
    progress DOUBLE PRECISION NOT NULL DEFAULT 0,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    queued_at TEXT,
    started_at TEXT,
    finished_at TEXT,
    optimization_seconds DOUBLE PRECISION,
    chosen TEXT,
    notes TEXT NOT NULL DEFAULT '[]',
    lease INTEGER NOT NULL DEFAULT 0,
    lease_expires DOUBLE PRECISION,
    worker TEXT
);
CREATE TABLE IF NOT EXISTS health (
    model_id TEXT PRIMARY KEY REFERENCES models(id) ON DELETE CASCADE,
    timeouts INTEGER NOT NULL DEFAULT 0,
    crashes INTEGER NOT NULL DEFAULT 0,
    out_of_memory INTEGER NOT NULL DEFAULT 0,
    unhealthy TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs(state, queued_at);
CREATE TABLE IF NOT EXISTS routing (
    model_id TEXT PRIMARY KEY REFERENCES models(id) ON DELETE CASCADE,
    policy TEXT,
    guard TEXT,
    revision INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS events (
    seq {serial},
    model_id TEXT NOT NULL REFERENCES models(id) ON DELETE CASCADE,
    event TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_model ON events(model_id, seq);
CREATE TABLE IF NOT EXISTS live (
    seq {serial},
    model_id TEXT NOT NULL REFERENCES models(id) ON DELETE CASCADE,
    sample TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS live_by_model ON live(model_id, seq);
CREATE TABLE IF NOT EXISTS variants (
    model_id TEXT NOT NULL REFERENCES models(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    runtime TEXT NOT NULL,
    filename TEXT NOT NULL,
    size_bytes BIGINT NOT NULL,
    version BIGINT NOT NULL,
    PRIMARY KEY (model_id, name)
);
CREATE TABLE IF NOT EXISTS files (
    model_id TEXT NOT NULL REFERENCES models(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    key TEXT NOT NULL,
    PRIMARY KEY (model_id, name)
);
"""

_SERIAL = {
    # AUTOINCREMENT: a deleted newest row's number is never reused, so `seq` orders events for good.
    "sqlite": "INTEGER PRIMARY KEY AUTOINCREMENT",
    "postgresql": "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
}


def schema(dialect: str) -> str:
    return _TABLES.format(serial=_SERIAL[dialect])
