"""The model index: models, their variants and files, health, routing, its events and live evidence."""

from __future__ import annotations

import time

from wire.contract.live import LiveSample
from wire.contract.models import FAILURE_KINDS, FailureKind, ModelInfo, ModelMeta, RoutingEvent
from wire.contract.routing import MAX_WINDOW, Guard, Pinned

from .database import Database, Session
from .model_info import INFO_SQL, VARIANT_SQL, model_info


class NameTakenError(Exception):
    """Another model already has this name (and replace was not asked for)."""


class ModelIndex:
    def __init__(self, db: Database) -> None:
        self.db = db

    # ---- models ----

    def insert_model(self, tx: Session, meta: ModelMeta, keys: dict[str, str], original_size: int, replace: bool) -> str | None:
        """Index a model whose files are stored under `keys`; returns the id it replaced, if any."""
        old = tx.one("SELECT id FROM models WHERE name = ?", (meta.name,))
        if old is not None and not replace:
            raise NameTakenError(meta.name)  # taken meanwhile by a concurrent upload
        if old is not None:
            tx.execute("DELETE FROM models WHERE id = ?", (old["id"],))
        tx.execute("INSERT INTO models (id, name, meta) VALUES (?, ?, ?)", (meta.id, meta.name, meta.model_dump_json()))
        self.put_variant(tx, meta.id, "original", meta.summary.format, "original.pt", original_size)
        self.put_files(tx, meta.id, keys)
        return None if old is None else old["id"]

    def put_variant(self, tx: Session, model_id: str, name: str, runtime: str, filename: str, size: int) -> None:
        tx.execute(
            "INSERT INTO variants (model_id, name, runtime, filename, size_bytes, version) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (model_id, name) DO UPDATE SET runtime = excluded.runtime, filename = excluded.filename, "
            "size_bytes = excluded.size_bytes, version = excluded.version",
            (model_id, name, runtime, filename, size, time.time_ns()),
        )

    def put_files(self, tx: Session, model_id: str, keys: dict[str, str]) -> None:
        tx.many(
            "INSERT INTO files (model_id, name, key) VALUES (?, ?, ?) ON CONFLICT (model_id, name) DO UPDATE SET key = excluded.key",
            [(model_id, name, key) for name, key in keys.items()],
        )

    def get(self, ref: str) -> ModelInfo | None:
        """Look a model up by id or by name: two queries, the one lookup a batch makes."""
        with self.db.session() as db:
            row = db.one(INFO_SQL, (ref, ref))
            if row is None:
                return None
            variants = db.all(VARIANT_SQL, (row["id"],))
        # Parsing a row into a ModelInfo costs far more than the query; rows that did not change reuse it.
        return model_info(tuple(row.values()), tuple(tuple(v.values()) for v in variants))

    def ids(self) -> list[str]:
        with self.db.session() as db:
            return [row["id"] for row in db.all("SELECT id FROM models ORDER BY name")]

    def delete(self, model_id: str) -> bool:
        with self.db.transaction() as tx:
            return tx.execute("DELETE FROM models WHERE id = ?", (model_id,)) > 0

    def exists(self, model_id: str) -> bool:
        with self.db.session() as db:
            return self.exists_in(db, model_id)

    @staticmethod
    def exists_in(db: Session, model_id: str) -> bool:
        return db.one("SELECT 1 AS found FROM models WHERE id = ?", (model_id,)) is not None

    def has_name(self, name: str) -> bool:
        with self.db.session() as db:
            return db.one("SELECT 1 AS found FROM models WHERE name = ?", (name,)) is not None

    def file_key(self, model_id: str, name: str) -> str | None:
        with self.db.session() as db:
            row = db.one("SELECT key FROM files WHERE model_id = ? AND name = ?", (model_id, name))
        return None if row is None else row["key"]

    def known(self) -> tuple[set[str], set[str]]:
        """(every model id, every stored file's key): what a sweep must keep."""
        with self.db.session() as db:
            ids = {row["id"] for row in db.all("SELECT id FROM models")}
            keys = {row["key"] for row in db.all("SELECT key FROM files")}
        return ids, keys

    def variant_sizes(self) -> list[tuple[str, str, str, int]]:
        """(model name, variant, runtime, bytes) for every stored variant."""
        with self.db.session() as db:
            rows = db.all("SELECT m.name, v.name AS variant, v.runtime, v.size_bytes FROM variants v JOIN models m ON m.id = v.model_id")
        return [(row["name"], row["variant"], row["runtime"], row["size_bytes"]) for row in rows]

    # ---- health ----

    def record_timeout(self, model_id: str, reason: str, unhealthy_after: int, at: str) -> None:
        """Count a forward call that hit the hard limit; at `unhealthy_after` failures the model stops serving."""
        self.record_failure(model_id, "timeouts", reason, unhealthy_after, at)

    def record_failure(self, model_id: str, kind: FailureKind, reason: str, unhealthy_after: int, at: str) -> None:
        """Count a failure of the model's code (a timeout, a crashed worker, the memory cap); at
        `unhealthy_after` of them, of any kind, the model stops serving."""
        if kind not in FAILURE_KINDS:  # a column name: only the fixed ones, never the caller's text
            raise ValueError(f"unknown failure kind {kind!r}")
        column = kind
        with self.db.transaction() as tx:
            tx.execute(
                f"INSERT INTO health (model_id, {column}) VALUES (?, 1) ON CONFLICT (model_id) DO UPDATE SET {column} = health.{column} + 1",
                (model_id,),
            )
            row = tx.one(f"SELECT {', '.join(FAILURE_KINDS)} FROM health WHERE model_id = ?", (model_id,))
            total = sum(row[c] for c in FAILURE_KINDS)
            if total >= unhealthy_after:
                counts = ", ".join(f"{row[c]} {what}" for c, what in FAILURE_KINDS.items() if row[c])
                marked = f"{total} failed forward calls ({counts}), the last: {reason} (at {at})"
                tx.execute("UPDATE health SET unhealthy = ? WHERE model_id = ? AND unhealthy IS NULL", (marked, model_id))

    def reset_health(self, model_id: str) -> None:
        with self.db.transaction() as tx:
            tx.execute("DELETE FROM health WHERE model_id = ?", (model_id,))

    # ---- routing, its events and live evidence ----

    def set_routing(self, model_id: str, policy: str, event: RoutingEvent) -> None:
        """Store a policy (JSON) and its event; a new revision starts the guard's evidence afresh."""
        with self.db.transaction() as tx:
            tx.execute(
                "INSERT INTO routing (model_id, policy, revision) VALUES (?, ?, 1) "
                "ON CONFLICT (model_id) DO UPDATE SET policy = excluded.policy, revision = routing.revision + 1",
                (model_id, policy),
            )
            self._add_event(tx, model_id, event)

    def set_guard(self, model_id: str, guard: Guard, event: RoutingEvent) -> None:
        with self.db.transaction() as tx:
            tx.execute(
                "INSERT INTO routing (model_id, guard) VALUES (?, ?) ON CONFLICT (model_id) DO UPDATE SET guard = excluded.guard",
                (model_id, guard.model_dump_json()),
            )
            self._add_event(tx, model_id, event)

    def roll_back(self, model_id: str, revision: int, event: RoutingEvent) -> bool:
        """Pin the original, unless the routing changed since `revision` was read (another worker, or a user, acted first)."""
        pinned = Pinned(variant="original").model_dump_json()
        with self.db.transaction() as tx:
            if not self.exists_in(tx, model_id):
                return False
            # Conditional statements, not a read then a write: of two replicas rolling back at once, one wins.
            won = tx.execute(
                "UPDATE routing SET policy = ?, revision = revision + 1 WHERE model_id = ? AND revision = ?", (pinned, model_id, revision)
            )
            if not won and revision == 0:  # no routing row yet
                won = tx.execute(
                    "INSERT INTO routing (model_id, policy, revision) VALUES (?, ?, 1) ON CONFLICT (model_id) DO NOTHING", (model_id, pinned)
                )
            if won:
                self._add_event(tx, model_id, event)
        return bool(won)

    def events(self, model_id: str, limit: int = 100) -> list[RoutingEvent]:
        """The model's routing events, oldest first (the last `limit` of them)."""
        with self.db.session() as db:
            rows = db.all(
                "SELECT event FROM (SELECT seq, event FROM events WHERE model_id = ? ORDER BY seq DESC LIMIT ?) AS recent ORDER BY seq",
                (model_id, limit),
            )
        return [RoutingEvent.model_validate_json(row["event"]) for row in rows]

    def event_counts(self) -> list[tuple[str, str, str, int]]:
        """(model name, kind, trigger, count) of every stored event kind: counters that survive restarts."""
        counts: dict[tuple[str, str, str], int] = {}
        with self.db.session() as db:
            rows = db.all("SELECT m.name, e.event FROM events e JOIN models m ON m.id = e.model_id")
        for row in rows:
            event = RoutingEvent.model_validate_json(row["event"])
            key = (row["name"], event.kind, event.trigger)
            counts[key] = counts.get(key, 0) + 1
        return [(*key, count) for key, count in counts.items()]

    def record_live(self, samples: list[tuple[str, LiveSample]]) -> None:
        """Append served requests' samples; each model keeps its newest MAX_WINDOW."""
        # Evidence, not acknowledged data: losing the last moments of it to a power cut is fine, and
        # a durable commit per flush would cost the worker's thread milliseconds.
        with self.db.transaction(durable=False) as tx:
            tx.many(
                "INSERT INTO live (model_id, sample) SELECT ?, ? WHERE EXISTS (SELECT 1 FROM models WHERE id = ?)",
                [(model_id, sample.model_dump_json(), model_id) for model_id, sample in samples],
            )
            for model_id in {model_id for model_id, _ in samples}:
                tx.execute(
                    "DELETE FROM live WHERE model_id = ? AND seq <= (SELECT seq FROM live WHERE model_id = ? ORDER BY seq DESC LIMIT 1 OFFSET ?)",
                    (model_id, model_id, MAX_WINDOW),
                )

    def live_samples(self, model_id: str, limit: int) -> list[LiveSample]:
        """The newest `limit` samples, newest first."""
        with self.db.session() as db:
            rows = db.all("SELECT sample FROM live WHERE model_id = ? ORDER BY seq DESC LIMIT ?", (model_id, limit))
        return [LiveSample.model_validate_json(row["sample"]) for row in rows]

    @staticmethod
    def _add_event(tx: Session, model_id: str, event: RoutingEvent) -> None:
        tx.execute("INSERT INTO events (model_id, event) VALUES (?, ?)", (model_id, event.model_dump_json()))
