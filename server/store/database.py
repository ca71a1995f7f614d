"""The SQL layer under the model index and the job queue: one set of statements, two dialects.

Statements are written once, with `?` placeholders, in SQL that both SQLite (3.24+) and PostgreSQL
accept; a dialect translates the placeholders and supplies the few clauses that differ (the DDL of
an auto-numbered key, `FOR UPDATE SKIP LOCKED`, how durable a commit must be). Rows are dicts on both.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from .per_process import PerProcess
from .schema import schema

Row = dict[str, Any]


class Session:
    """Statements on one connection, inside a transaction or not."""

    def __init__(self, connection: Any, translate: bool) -> None:
        self._connection = connection
        self._translate = translate

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run a statement; the number of rows it changed."""
        return self._cursor(sql, params).rowcount

    def one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        return self._cursor(sql, params).fetchone()

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return self._cursor(sql, params).fetchall()

    def many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._connection.cursor().executemany(self._sql(sql), rows)

    def _cursor(self, sql: str, params: Sequence[Any]) -> Any:
        return self._connection.execute(self._sql(sql), params)

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self._translate else sql


class Database(Protocol):
    # Appended to the SELECT that picks a queued job: on PostgreSQL, concurrent claimers skip a row
    # another transaction holds instead of waiting for it (SQLite's BEGIN IMMEDIATE serializes anyway).
    skip_locked: str
    # The database's clock in seconds since the epoch: leases are timed by one clock, not each worker's own.
    clock: str

    def session(self) -> Iterator[Session]: ...

    def transaction(self, durable: bool = True) -> Iterator[Session]: ...

    def files(self) -> tuple[Path, ...]:
        """Local files of the index (a process that uses it must be allowed to read them)."""
        ...

    def writable_files(self) -> tuple[Path, ...]:
        """Of those, the ones a process that uses the index must be allowed to write."""
        ...


def _dict_row(cursor: sqlite3.Cursor, values: tuple) -> Row:
    return {column[0]: value for column, value in zip(cursor.description, values)}


class SqliteDatabase:
    """The embedded index: one SQLite file in WAL mode, shared by every process of one server."""

    skip_locked = ""
    clock = "((julianday('now') - 2440587.5) * 86400.0)"

    def __init__(self, path: Path, read_only: bool = False) -> None:
        self.path = path
        # Read-only (inference workers): SQLite refuses every write on the connection, whatever the
        # process runs; the main process created the file and its schema before any worker starts.
        self.read_only = read_only
        self._local = threading.local()

    def _connection(self) -> sqlite3.Connection:
        # One per process and thread: sqlite3 objects must not cross either.
        local = self._local
        if getattr(local, "pid", None) != os.getpid():
            local.pid = os.getpid()
            local.connection = self._connect()
        return local.connection

    def _connect(self) -> sqlite3.Connection:
        if self.read_only:
            connection = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=30, isolation_level=None)
            connection.row_factory = _dict_row
            return connection
        self.path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        connection.row_factory = _dict_row
        connection.execute("PRAGMA journal_mode=WAL")
        # FULL: a committed upload survives power loss, not just a process crash.
        connection.execute("PRAGMA synchronous=FULL")
        connection.execute("PRAGMA foreign_keys=ON")
        connection.executescript(schema("sqlite"))
        _add_missing_columns(connection)
        return connection

    @contextmanager
    def session(self) -> Iterator[Session]:
        yield Session(self._connection(), translate=False)

    @contextmanager
    def transaction(self, durable: bool = True) -> Iterator[Session]:
        connection = self._connection()
        if not durable:
            connection.execute("PRAGMA synchronous=NORMAL")
        connection.execute("BEGIN IMMEDIATE")
        try:
            yield Session(connection, translate=False)
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        else:
            connection.execute("COMMIT")
        finally:
            if not durable:
                connection.execute("PRAGMA synchronous=FULL")

    def files(self) -> tuple[Path, ...]:
        self._connection()  # they exist once a connection is open; the server's main process keeps one
        return tuple(Path(f"{self.path}{suffix}") for suffix in ("", "-wal", "-shm"))

    def writable_files(self) -> tuple[Path, ...]:
        # A WAL reader still writes the shared-memory index (-shm): read locks live there.
        return self.files()[2:] if self.read_only else self.files()


# Columns added after the first release: stores created before them gain them at the next start.
_LATER_COLUMNS = {
    "jobs": (("lease", "INTEGER NOT NULL DEFAULT 0"), ("lease_expires", "DOUBLE PRECISION"), ("worker", "TEXT")),
    "health": (("crashes", "INTEGER NOT NULL DEFAULT 0"), ("out_of_memory", "INTEGER NOT NULL DEFAULT 0")),
}


def _add_missing_columns(connection: sqlite3.Connection) -> None:
    for table, columns in _LATER_COLUMNS.items():
        present = {row["name"] for row in connection.execute(f"PRAGMA table_info({table})")}
        for name, declaration in columns:
            if name not in present:
                connection.execute(f"ALTER TABLE {table} ADD COLUMN {name} {declaration}")


# Any constant: it serializes the schema's CREATE ... IF NOT EXISTS between processes starting at once.
_SCHEMA_LOCK = 7_310_414


class PostgresDatabase:
    """The shared index: a PostgreSQL database, one connection pool per process."""

    skip_locked = " FOR UPDATE SKIP LOCKED"
    clock = "CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS DOUBLE PRECISION)"

    def __init__(self, dsn: str, pool_size: int = 4, read_only: bool = False) -> None:
        self.dsn = dsn
        self.pool_size = pool_size
        # Read-only sessions: a guard against our own bugs, not against a compromised process, which
        # can turn it off; that takes a role with SELECT only (`worker_store`, deploy/README.md).
        self.read_only = read_only
        self._pool: PerProcess[Any] = PerProcess(self._open)

    def _open(self) -> Any:
        from psycopg.rows import dict_row
        from psycopg_pool import ConnectionPool

        options = {"options": "-c default_transaction_read_only=on"} if self.read_only else {}
        pool = ConnectionPool(
            self.dsn,
            min_size=1,
            max_size=self.pool_size,
            kwargs={"autocommit": True, "row_factory": dict_row, **options},
            open=True,
            name=f"optiserve-{os.getpid()}",
        )
        if self.read_only:
            return pool  # the schema is the writers' business
        with pool.connection() as connection, connection.transaction():
            connection.execute(f"SELECT pg_advisory_xact_lock({_SCHEMA_LOCK})")
            connection.execute(schema("postgresql"))
            # Only where a column is missing: ALTER TABLE takes an exclusive lock on the table even when
            # IF NOT EXISTS makes it a no-op, and deadlocks with other replicas' job claims.
            present = {
                (row["table_name"], row["column_name"])
                for row in connection.execute("SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = current_schema()")
            }
            for table, columns in _LATER_COLUMNS.items():
                for name, declaration in columns:
                    if (table, name) not in present:
                        connection.execute(f"ALTER TABLE {table} ADD COLUMN {name} {declaration}")
        return pool

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._pool.get().connection() as connection:
            yield Session(connection, translate=True)

    @contextmanager
    def transaction(self, durable: bool = True) -> Iterator[Session]:
        with self._pool.get().connection() as connection, connection.transaction():
            if not durable:
                connection.execute("SET LOCAL synchronous_commit TO OFF")
            yield Session(connection, translate=True)

    def files(self) -> tuple[Path, ...]:
        return ()

    def writable_files(self) -> tuple[Path, ...]:
        return ()

    def close(self) -> None:
        pool = self._pool.pop()
        if pool is not None:
            pool.close()


def integrity_errors() -> tuple[type[Exception], ...]:
    """Exceptions of a unique or foreign-key constraint, on either dialect."""
    errors: list[type[Exception]] = [sqlite3.IntegrityError]
    try:
        import psycopg

        errors.append(psycopg.errors.IntegrityError)
    except ImportError:
        pass
    return tuple(errors)
