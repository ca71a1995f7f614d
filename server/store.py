"""The model registry: one directory per model plus an SQLite index (WAL) shared by every process.

Processes share no memory (API servers, inference workers, the job runner), so this is the only
place they agree on what exists. Files are written atomically before the index row that points at
them is committed, so a crash at any moment leaves either no model or a complete one; `recover()`
sweeps what a crash left half-done.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from optimizer_pipeline.files import atomic_write_bytes, atomic_write_text
from optimizer_pipeline.report import Chosen

from .live_window import LiveSample
from .routing import MAX_WINDOW, Guard, Pinned
from .schemas import Health, JobStatus, ModelInfo, ModelMeta, RoutingEvent, VariantInfo

SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    meta TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    model_id TEXT PRIMARY KEY REFERENCES models(id) ON DELETE CASCADE,
    state TEXT NOT NULL,
    stage TEXT,
    progress REAL NOT NULL DEFAULT 0,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    queued_at TEXT,
    started_at TEXT,
    finished_at TEXT,
    optimization_seconds REAL,
    chosen TEXT,
    notes TEXT NOT NULL DEFAULT '[]'
);
CREATE TABLE IF NOT EXISTS health (
    model_id TEXT PRIMARY KEY REFERENCES models(id) ON DELETE CASCADE,
    timeouts INTEGER NOT NULL DEFAULT 0,
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
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    model_id TEXT NOT NULL REFERENCES models(id) ON DELETE CASCADE,
    event TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_model ON events(model_id, seq);
CREATE TABLE IF NOT EXISTS live (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    model_id TEXT NOT NULL REFERENCES models(id) ON DELETE CASCADE,
    sample TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS live_by_model ON live(model_id, seq);
CREATE TABLE IF NOT EXISTS variants (
    model_id TEXT NOT NULL REFERENCES models(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    runtime TEXT NOT NULL,
    filename TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    version INTEGER NOT NULL,
    PRIMARY KEY (model_id, name)
);
"""

JOB_COLUMNS = "state, stage, progress, error, attempts, queued_at, started_at, finished_at, optimization_seconds, chosen, notes"


class NameTakenError(Exception):
    """Another model already has this name (and replace was not asked for)."""


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def new_model_id() -> str:
    return uuid.uuid4().hex[:12]


class Store:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.models_dir = self.root / "models"
        self.index_path = self.root / "index.sqlite3"
        self._local = threading.local()

    # ---- connections: one per process and thread (sqlite3 objects must not cross either) ----

    def _connection(self) -> sqlite3.Connection:
        local = self._local
        if getattr(local, "pid", None) != os.getpid():
            local.pid = os.getpid()
            local.connection = self._connect()
        return local.connection

    def _connect(self) -> sqlite3.Connection:
        self.models_dir.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(self.index_path, timeout=30, isolation_level=None)
        connection.row_factory = sqlite3.Row
        connection.execute("PRAGMA journal_mode=WAL")
        # FULL: a committed upload survives power loss, not just a process crash.
        connection.execute("PRAGMA synchronous=FULL")
        connection.execute("PRAGMA foreign_keys=ON")
        connection.executescript(SCHEMA)
        return connection

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        connection = self._connection()
        connection.execute("BEGIN IMMEDIATE")
        try:
            yield connection
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")

    def index_files(self) -> tuple[Path, ...]:
        """The SQLite files a process that reads or writes the index needs to write (WAL mode)."""
        self._connection()  # they exist once a connection is open; the server's main process keeps one
        return tuple(Path(f"{self.index_path}{suffix}") for suffix in ("", "-wal", "-shm"))

    # ---- models ----

    def model_dir(self, model_id: str) -> Path:
        return self.models_dir / model_id

    def stage_files(self, model_id: str, files: dict[str, bytes]) -> Path:
        """Write an upload's files where the model will live; unindexed until `add_model` (a crash leaves a sweepable orphan)."""
        directory = self.model_dir(model_id)
        for filename, data in files.items():
            atomic_write_bytes(directory / filename, data)
        return directory

    def discard_staged(self, model_id: str) -> None:
        shutil.rmtree(self.model_dir(model_id), ignore_errors=True)

    def add_model(self, meta: ModelMeta, replace: bool = False) -> str | None:
        """Index a staged model with a queued job. Returns the id it replaced, if any."""
        if not replace and self.has_name(meta.name):
            raise NameTakenError(meta.name)
        directory = self.model_dir(meta.id)
        atomic_write_text(directory / "model.json", meta.model_dump_json(indent=2))
        original_size = (directory / "original.pt").stat().st_size
        try:
            with self._transaction() as db:
                old = db.execute("SELECT id FROM models WHERE name = ?", (meta.name,)).fetchone()
                if old is not None and not replace:
                    raise NameTakenError(meta.name)  # taken meanwhile by a concurrent upload
                if old is not None:
                    db.execute("DELETE FROM models WHERE id = ?", (old["id"],))
                db.execute("INSERT INTO models (id, name, meta) VALUES (?, ?, ?)", (meta.id, meta.name, meta.model_dump_json()))
                db.execute("INSERT INTO jobs (model_id, state, queued_at) VALUES (?, 'queued', ?)", (meta.id, now()))
                self._put_variant(db, meta.id, "original", "torchscript", "original.pt", original_size)
        except BaseException:
            self.discard_staged(meta.id)
            raise
        if old is not None:
            shutil.rmtree(self.model_dir(old["id"]), ignore_errors=True)
            return old["id"]
        return None

    def get(self, ref: str) -> ModelInfo | None:
        """Look a model up by id or by name."""
        db = self._connection()
        row = db.execute(
            f"SELECT m.id, m.meta, {JOB_COLUMNS}, COALESCE(h.timeouts, 0) AS timeouts, h.unhealthy, "
            "r.policy, r.guard, COALESCE(r.revision, 0) AS revision "
            "FROM models m JOIN jobs j ON j.model_id = m.id LEFT JOIN health h ON h.model_id = m.id "
            "LEFT JOIN routing r ON r.model_id = m.id "
            "WHERE m.id = ? OR m.name = ?",
            (ref, ref),
        ).fetchone()
        if row is None:
            return None
        variants = db.execute(
            f"SELECT {', '.join(_VARIANT_COLUMNS)} FROM variants WHERE model_id = ? ORDER BY name DESC",
            (row["id"],),
        ).fetchall()
        # Parsing a row into a ModelInfo costs far more than the query; rows that did not change reuse it.
        return _model_info(tuple(row), tuple(tuple(v) for v in variants))

    def list(self) -> list[ModelInfo]:
        ids = [row["id"] for row in self._connection().execute("SELECT id FROM models ORDER BY name")]
        return [info for model_id in ids if (info := self.get(model_id)) is not None]

    def delete(self, model_id: str) -> bool:
        with self._transaction() as db:
            deleted = db.execute("DELETE FROM models WHERE id = ?", (model_id,)).rowcount > 0
        shutil.rmtree(self.model_dir(model_id), ignore_errors=True)
        return deleted

    def exists(self, model_id: str) -> bool:
        return self._exists(self._connection(), model_id)

    def has_name(self, name: str) -> bool:
        return self._connection().execute("SELECT 1 FROM models WHERE name = ?", (name,)).fetchone() is not None

    # ---- health ----

    def record_timeout(self, model_id: str, reason: str, unhealthy_after: int) -> None:
        """Count a forward call that hit the hard limit; at `unhealthy_after` of them the model stops serving."""
        with self._transaction() as db:
            db.execute(
                "INSERT INTO health (model_id, timeouts) VALUES (?, 1) "
                "ON CONFLICT(model_id) DO UPDATE SET timeouts = timeouts + 1",
                (model_id,),
            )
            timeouts = db.execute("SELECT timeouts FROM health WHERE model_id = ?", (model_id,)).fetchone()["timeouts"]
            if timeouts >= unhealthy_after:
                marked = f"{timeouts} forward calls ran past the time limit, the last: {reason} (at {now()})"
                db.execute("UPDATE health SET unhealthy = ? WHERE model_id = ? AND unhealthy IS NULL", (marked, model_id))

    def reset_health(self, model_id: str) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM health WHERE model_id = ?", (model_id,))

    # ---- routing, its events and live evidence ----

    def set_routing(self, model_id: str, policy: str, event: RoutingEvent) -> None:
        """Store a policy (JSON) and its event; a new revision starts the guard's evidence afresh."""
        with self._transaction() as db:
            db.execute(
                "INSERT INTO routing (model_id, policy, revision) VALUES (?, ?, 1) "
                "ON CONFLICT(model_id) DO UPDATE SET policy = excluded.policy, revision = revision + 1",
                (model_id, policy),
            )
            self._add_event(db, model_id, event)

    def set_guard(self, model_id: str, guard: Guard, event: RoutingEvent) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT INTO routing (model_id, guard) VALUES (?, ?) ON CONFLICT(model_id) DO UPDATE SET guard = excluded.guard",
                (model_id, guard.model_dump_json()),
            )
            self._add_event(db, model_id, event)

    def roll_back(self, model_id: str, revision: int, event: RoutingEvent) -> bool:
        """Pin the original, unless the routing changed since `revision` was read (another worker, or a user, acted first)."""
        with self._transaction() as db:
            row = db.execute("SELECT revision FROM routing WHERE model_id = ?", (model_id,)).fetchone()
            if (row["revision"] if row else 0) != revision or not self._exists(db, model_id):
                return False
            pinned = Pinned(variant="original").model_dump_json()
            db.execute(
                "INSERT INTO routing (model_id, policy, revision) VALUES (?, ?, 1) "
                "ON CONFLICT(model_id) DO UPDATE SET policy = excluded.policy, revision = revision + 1",
                (model_id, pinned),
            )
            self._add_event(db, model_id, event)
        return True

    def events(self, model_id: str, limit: int = 100) -> list[RoutingEvent]:
        """The model's routing events, oldest first (the last `limit` of them)."""
        rows = self._connection().execute(
            "SELECT event FROM (SELECT seq, event FROM events WHERE model_id = ? ORDER BY seq DESC LIMIT ?) ORDER BY seq",
            (model_id, limit),
        )
        return [RoutingEvent.model_validate_json(row["event"]) for row in rows]

    def event_counts(self) -> list[tuple[str, str, str, int]]:
        """(model name, kind, trigger, count) of every stored event kind: counters that survive restarts."""
        counts: dict[tuple[str, str, str], int] = {}
        for row in self._connection().execute("SELECT m.name, e.event FROM events e JOIN models m ON m.id = e.model_id"):
            event = RoutingEvent.model_validate_json(row["event"])
            key = (row["name"], event.kind, event.trigger)
            counts[key] = counts.get(key, 0) + 1
        return [(*key, count) for key, count in counts.items()]

    def record_live(self, samples: list[tuple[str, LiveSample]]) -> None:
        """Append served requests' samples; each model keeps its newest MAX_WINDOW."""
        db = self._connection()
        # Evidence, not acknowledged data: losing the last moments of it to a power cut is fine, and
        # an fsync per flush would cost the worker's thread milliseconds.
        db.execute("PRAGMA synchronous=NORMAL")
        try:
            with self._transaction() as db:
                db.executemany(
                    "INSERT INTO live (model_id, sample) SELECT ?, ? WHERE EXISTS (SELECT 1 FROM models WHERE id = ?)",
                    [(model_id, sample.model_dump_json(), model_id) for model_id, sample in samples],
                )
                for model_id in {model_id for model_id, _ in samples}:
                    db.execute(
                        "DELETE FROM live WHERE model_id = ? AND seq <= "
                        "(SELECT seq FROM live WHERE model_id = ? ORDER BY seq DESC LIMIT 1 OFFSET ?)",
                        (model_id, model_id, MAX_WINDOW),
                    )
        finally:
            db.execute("PRAGMA synchronous=FULL")

    def live_samples(self, model_id: str, limit: int) -> list[LiveSample]:
        """The newest `limit` samples, newest first."""
        rows = self._connection().execute(
            "SELECT sample FROM live WHERE model_id = ? ORDER BY seq DESC LIMIT ?", (model_id, limit)
        )
        return [LiveSample.model_validate_json(row["sample"]) for row in rows]

    def _add_event(self, db: sqlite3.Connection, model_id: str, event: RoutingEvent) -> None:
        db.execute("INSERT INTO events (model_id, event) VALUES (?, ?)", (model_id, event.model_dump_json()))

    @staticmethod
    def _exists(db: sqlite3.Connection, model_id: str) -> bool:
        return db.execute("SELECT 1 FROM models WHERE id = ?", (model_id,)).fetchone() is not None

    # ---- jobs ----

    def claim_next_job(self) -> str | None:
        """Move the oldest queued job to optimizing; returns its model id."""
        with self._transaction() as db:
            row = db.execute("SELECT model_id FROM jobs WHERE state = 'queued' ORDER BY queued_at LIMIT 1").fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE jobs SET state = 'optimizing', stage = 'starting', progress = 0, attempts = attempts + 1, "
                "started_at = ?, error = NULL WHERE model_id = ?",
                (now(), row["model_id"]),
            )
            return row["model_id"]

    def set_progress(self, model_id: str, stage: str, progress: float) -> None:
        with self._transaction() as db:
            db.execute(
                "UPDATE jobs SET stage = ?, progress = ? WHERE model_id = ? AND state = 'optimizing'",
                (stage, progress, model_id),
            )

    def finish_job(self, model_id: str, chosen: Chosen, seconds: float, optimized: VariantInfo | None, files: dict[str, bytes]) -> bool:
        """Write the job's files, then mark it ready. False (and nothing kept) if the model was deleted meanwhile."""
        directory = self.model_dir(model_id)
        if not self.exists(model_id):
            return False
        for filename, data in files.items():
            atomic_write_bytes(directory / filename, data)
        with self._transaction() as db:
            updated = db.execute(
                "UPDATE jobs SET state = 'ready', stage = 'done', progress = 1, finished_at = ?, "
                "optimization_seconds = ?, chosen = ? WHERE model_id = ? AND state = 'optimizing'",
                (now(), seconds, chosen.model_dump_json(), model_id),
            ).rowcount
            if updated and optimized is not None:
                self._put_variant(db, model_id, optimized.name, optimized.runtime, optimized.filename, optimized.size_bytes)
        if not updated and not self.exists(model_id):
            shutil.rmtree(directory, ignore_errors=True)
        return bool(updated)

    def fail_job(self, model_id: str, reason: str, seconds: float | None = None) -> None:
        with self._transaction() as db:
            db.execute(
                "UPDATE jobs SET state = 'failed', error = ?, finished_at = ?, optimization_seconds = ? "
                "WHERE model_id = ? AND state = 'optimizing'",
                (reason, now(), seconds, model_id),
            )

    def hand_back_jobs(self, note: str) -> None:
        """Put every optimizing job back in the queue without spending an attempt: the server stopped, not the job."""
        with self._transaction() as db:
            for row in db.execute("SELECT model_id FROM jobs WHERE state = 'optimizing'").fetchall():
                self._requeue(db, row["model_id"], note, refund_attempt=True)

    def recover(self, max_attempts: int) -> list[str]:
        """At startup: re-queue or fail jobs a crash interrupted; sweep partial files. Returns what it did."""
        actions = []
        with self._transaction() as db:
            for row in db.execute("SELECT model_id, attempts FROM jobs WHERE state = 'optimizing'").fetchall():
                model_id, attempts = row["model_id"], row["attempts"]
                if attempts >= max_attempts:
                    reason = (
                        f"the server stopped during optimization {attempts} time(s); not retried again "
                        f"(upload the model again, perhaps with fewer candidates or latency rounds)"
                    )
                    db.execute(
                        "UPDATE jobs SET state = 'failed', error = ?, finished_at = ? WHERE model_id = ?",
                        (reason, now(), model_id),
                    )
                    actions.append(f"{model_id}: failed ({reason})")
                else:
                    note = f"attempt {attempts} was cut short (the server stopped without finishing it); re-queued"
                    self._requeue(db, model_id, note, False)
                    actions.append(f"{model_id}: re-queued after an interrupted attempt {attempts}")
            known = {row["id"] for row in db.execute("SELECT id FROM models")}
        self._sweep(known)
        return actions

    def _requeue(self, db: sqlite3.Connection, model_id: str, note: str, refund_attempt: bool) -> None:
        notes = json.loads(db.execute("SELECT notes FROM jobs WHERE model_id = ?", (model_id,)).fetchone()["notes"])
        db.execute(
            "UPDATE jobs SET state = 'queued', stage = NULL, progress = 0, attempts = attempts - ?, notes = ? "
            "WHERE model_id = ? AND state = 'optimizing'",
            (1 if refund_attempt else 0, json.dumps(notes + [note]), model_id),
        )

    def _sweep(self, known_ids: set[str]) -> None:
        # Directories whose index row never committed, and temp files of interrupted atomic writes.
        for directory in self.models_dir.iterdir():
            if directory.is_dir() and directory.name not in known_ids:
                shutil.rmtree(directory, ignore_errors=True)
            elif directory.is_dir():
                for temp in directory.glob(".*.tmp"):
                    temp.unlink(missing_ok=True)

    # ---- variants and metrics ----

    def _put_variant(self, db: sqlite3.Connection, model_id: str, name: str, runtime: str, filename: str, size: int) -> None:
        db.execute(
            "INSERT OR REPLACE INTO variants (model_id, name, runtime, filename, size_bytes, version) VALUES (?, ?, ?, ?, ?, ?)",
            (model_id, name, runtime, filename, size, time.time_ns()),
        )

    def job_counts(self) -> dict[str, int]:
        rows = self._connection().execute("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state")
        return {row["state"]: row["n"] for row in rows}

    def variant_sizes(self) -> list[tuple[str, str, str, int]]:
        """(model name, variant, runtime, bytes) for every stored variant."""
        rows = self._connection().execute(
            "SELECT m.name, v.name AS variant, v.runtime, v.size_bytes FROM variants v JOIN models m ON m.id = v.model_id"
        )
        return [(row["name"], row["variant"], row["runtime"], row["size_bytes"]) for row in rows]


_INFO_COLUMNS = ("id", "meta", *JOB_COLUMNS.split(", "), "timeouts", "unhealthy", "policy", "guard", "revision")
_VARIANT_COLUMNS = ("name", "runtime", "filename", "size_bytes", "version")


@functools.lru_cache(maxsize=1024)
def _model_info(values: tuple, variant_values: tuple[tuple, ...]) -> ModelInfo:
    """A ModelInfo from the raw column values of `Store.get`'s two queries (hashable, so cached)."""
    row = dict(zip(_INFO_COLUMNS, values))
    meta = ModelMeta.model_validate_json(row["meta"])
    job = JobStatus(
        state=row["state"],
        stage=row["stage"],
        progress=row["progress"],
        error=row["error"],
        attempts=row["attempts"],
        queued_at=row["queued_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        optimization_seconds=row["optimization_seconds"],
        chosen=None if row["chosen"] is None else Chosen.model_validate_json(row["chosen"]),
        notes=json.loads(row["notes"]),
    )
    variant_infos = [VariantInfo(**dict(zip(_VARIANT_COLUMNS, v))) for v in variant_values]
    default = "optimized" if any(v.name == "optimized" for v in variant_infos) else "original"
    health = Health(healthy=row["unhealthy"] is None, reason=row["unhealthy"], timeouts=row["timeouts"])
    return ModelInfo(
        **meta.model_dump(),
        **job.model_dump(),
        variants=variant_infos,
        default_variant=default,
        health=health,
        routing=None if row["policy"] is None else json.loads(row["policy"]),
        guard=None if row["guard"] is None else Guard.model_validate_json(row["guard"]),
        routing_revision=row["revision"],
    )
