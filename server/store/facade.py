"""The store every process opens: the model index, the job queue and the artifact store behind one object.

Two backends. Embedded (the default): an SQLite index (WAL) and a local directory, shared by the
processes of one server, which holds the store's lock. Shared: a PostgreSQL index and an
S3-compatible object store, shared by any number of API replicas and job workers.

The order of writes is what keeps a crash harmless: files are complete in the artifact store before
the index row that names them commits, so a crash leaves either no model (and an orphan file that
`recover` sweeps) or a complete one.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

from optimizer_pipeline import atomic_write_bytes, atomic_write_stream, atomic_write_text
from wire.contract.live import LiveSample
from wire.contract.models import FailureKind, ModelInfo, ModelMeta, RoutingEvent, VariantInfo
from wire.contract.report import Chosen
from wire.contract.routing import Guard

from .stamps import now
from .artifacts import ArtifactStore
from .database import Database, integrity_errors
from .index import ModelIndex, NameTakenError
from .queue import Claim, JobQueue

# On a shared store other replicas upload while one sweeps: an unnamed object younger than this may
# be one whose row is about to commit. An hour is far longer than any upload's validation.
SWEEP_GRACE_SECONDS = 3600.0


class Store:
    def __init__(self, db: Database, artifacts: ArtifactStore, lease_seconds: float = 30.0) -> None:
        self.db = db
        self.index = ModelIndex(db)
        self.queue = JobQueue(db, lease_seconds)
        self.artifacts = artifacts

    # ---- models ----

    def stage_files(self, model_id: str, files: dict[str, bytes]) -> Path:
        """Write an upload's files to a local directory for validation; unindexed until `add_model`."""
        directory = self.artifacts.staging(model_id)
        for filename, data in files.items():
            atomic_write_bytes(directory / filename, data)
        return directory

    def stage_stream(self, model_id: str, filename: str, stream: BinaryIO) -> Path:
        """Copy a (possibly large) file object into the staging directory in chunks, atomically."""
        return atomic_write_stream(self.artifacts.staging(model_id) / filename, stream)

    def discard_staged(self, model_id: str) -> None:
        self.artifacts.delete_model(model_id)

    def add_model(self, meta: ModelMeta, replace: bool = False) -> str | None:
        """Store and index a staged model with a queued job. Returns the id it replaced, if any."""
        if not replace and self.has_name(meta.name):
            raise NameTakenError(meta.name)
        staged = self.artifacts.staging(meta.id)
        atomic_write_text(staged / "model.json", meta.model_dump_json(indent=2))
        original_size = (staged / "original.pt").stat().st_size
        try:
            keys = self.artifacts.publish(meta.id)
            with self.db.transaction() as tx:
                replaced = self.index.insert_model(tx, meta, keys, original_size, replace)
                self.queue.enqueue(tx, meta.id, now())
        except integrity_errors() as exc:
            # Two replicas indexing one name at once: the unique name refuses the second.
            self.discard_staged(meta.id)
            raise NameTakenError(meta.name) from exc
        except BaseException:
            self.discard_staged(meta.id)
            raise
        self.artifacts.release_staging(meta.id)
        if replaced is not None:
            self.artifacts.delete_model(replaced)
        return replaced

    def get(self, ref: str) -> ModelInfo | None:
        """Look a model up by id or by name."""
        return self.index.get(ref)

    def list(self) -> list[ModelInfo]:
        return [info for model_id in self.index.ids() if (info := self.get(model_id)) is not None]

    def delete(self, model_id: str) -> bool:
        deleted = self.index.delete(model_id)
        self.artifacts.delete_model(model_id)
        return deleted

    def exists(self, model_id: str) -> bool:
        return self.index.exists(model_id)

    def has_name(self, name: str) -> bool:
        return self.index.has_name(name)

    def file(self, model_id: str, name: str) -> Path | None:
        """A stored file of the model as a local path (fetched into the cache from a remote store); None if not stored."""
        key = self.artifacts.fixed_key(model_id, name) or self.index.file_key(model_id, name)
        return None if key is None else self.artifacts.local_path(key)

    def writable(self, model_id: str | None = None) -> tuple[Path, ...]:
        """Local paths a process using the store must be allowed to write: the index's files, the
        artifact cache, and, for a job (`model_id`), the model's files."""
        return (*self.artifacts.writable(model_id), *self.db.writable_files())

    def readable(self) -> tuple[Path, ...]:
        """Local paths a process that serves models must be allowed to read: the index's files and
        the artifacts (or their local cache); not the rest of the store's directory."""
        return (*self.artifacts.readable(), *self.db.files())

    # ---- health, routing, events and live evidence ----

    def record_timeout(self, model_id: str, reason: str, unhealthy_after: int) -> None:
        self.index.record_timeout(model_id, reason, unhealthy_after, now())

    def record_failure(self, model_id: str, kind: FailureKind, reason: str, unhealthy_after: int) -> None:
        self.index.record_failure(model_id, kind, reason, unhealthy_after, now())

    def reset_health(self, model_id: str) -> None:
        self.index.reset_health(model_id)

    def set_routing(self, model_id: str, policy: str, event: RoutingEvent) -> None:
        self.index.set_routing(model_id, policy, event)

    def set_guard(self, model_id: str, guard: Guard, event: RoutingEvent) -> None:
        self.index.set_guard(model_id, guard, event)

    def roll_back(self, model_id: str, revision: int, event: RoutingEvent) -> bool:
        return self.index.roll_back(model_id, revision, event)

    def events(self, model_id: str, limit: int = 100) -> list[RoutingEvent]:
        return self.index.events(model_id, limit)

    def event_counts(self) -> list[tuple[str, str, str, int]]:
        return self.index.event_counts()

    def record_live(self, samples: list[tuple[str, LiveSample]]) -> None:
        self.index.record_live(samples)

    def live_samples(self, model_id: str, limit: int) -> list[LiveSample]:
        return self.index.live_samples(model_id, limit)

    def variant_sizes(self) -> list[tuple[str, str, str, int]]:
        return self.index.variant_sizes()

    # ---- jobs ----

    def claim_next_job(self, worker: str) -> Claim | None:
        return self.queue.claim(worker, now())

    def renew_lease(self, claim: Claim) -> bool:
        return self.queue.renew(claim)

    def set_progress(self, claim: Claim, stage: str, progress: float) -> None:
        self.queue.set_progress(claim, stage, progress)

    def finish_job(self, claim: Claim, chosen: Chosen, seconds: float, optimized: VariantInfo | None, files: dict[str, bytes]) -> bool:
        """Store the job's files, then mark it ready. False (and nothing kept) if the lease or the model is gone."""
        if not self.exists(claim.model_id):
            return False
        keys = self.artifacts.put(claim.model_id, files)
        with self.db.transaction() as tx:
            finished = self.queue.finish(tx, claim, chosen.model_dump_json(), seconds, now())
            if finished:
                self.index.put_files(tx, claim.model_id, keys)
                if optimized is not None:
                    self.index.put_variant(tx, claim.model_id, optimized.name, optimized.runtime, optimized.filename, optimized.size_bytes)
        if not finished and not self.exists(claim.model_id):
            self.artifacts.delete_model(claim.model_id)  # deleted meanwhile: what we just wrote has no owner
        return finished

    def fail_job(self, claim: Claim, reason: str, seconds: float | None = None) -> bool:
        return self.queue.fail(claim, reason, now(), seconds)

    def hand_back_jobs(self, note: str, worker: str | None = None) -> None:
        """Re-queue optimizing jobs (all, or one worker's) without spending an attempt."""
        self.queue.hand_back(note, worker)

    def job_counts(self) -> dict[str, int]:
        return self.queue.counts()

    def recover(self, max_attempts: int) -> list[str]:
        """At the start of the one server of an embedded store: re-queue or fail jobs a crash interrupted; sweep partial files."""
        actions = self.queue.recover(max_attempts, now())
        self.sweep(min_age_seconds=0.0)
        return actions

    def requeue_expired(self, max_attempts: int) -> list[str]:
        """On a shared store, from any worker: re-queue or fail the jobs whose worker's lease ran out."""
        return self.queue.requeue_expired(max_attempts, now())

    def sweep(self, min_age_seconds: float = SWEEP_GRACE_SECONDS) -> list[str]:
        """Remove stored files that no index row names (a crash between the file and its row)."""
        known_ids, known_keys = self.index.known()
        return self.artifacts.sweep(known_ids, known_keys, min_age_seconds)
