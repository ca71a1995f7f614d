"""The job queue: one optimization job per model, on the index's own `jobs` table.

States: queued -> optimizing (under a lease) -> ready | failed; an interrupted job goes back to
queued. Every claim takes a new lease number, a fencing token: progress, renewal, finish and fail
count only while the caller still holds the job's current lease, so a worker that was presumed
dead (its lease ran out, another worker took the job) can no longer write anything.

Hand-written rather than procrastinate or pgqueuer: both are PostgreSQL-only, so the embedded SQLite
store would still need this queue; and the job's state lives in the model's row, which every status
read and every batch's lookup join, where a separate queue's table would be a second copy to keep in step.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from .database import Database, Session


@dataclass(frozen=True)
class Claim:
    model_id: str
    lease: int  # the fencing token


class JobQueue:
    def __init__(self, db: Database, lease_seconds: float) -> None:
        self.db = db
        self.lease_seconds = lease_seconds

    def enqueue(self, tx: Session, model_id: str, at: str) -> None:
        tx.execute("INSERT INTO jobs (model_id, state, queued_at) VALUES (?, 'queued', ?)", (model_id, at))

    def claim(self, worker: str, at: str) -> Claim | None:
        """Move the oldest queued job to optimizing under a new lease."""
        with self.db.transaction() as tx:
            row = tx.one(f"SELECT model_id FROM jobs WHERE state = 'queued' ORDER BY queued_at LIMIT 1{self.db.skip_locked}")
            if row is None:
                return None
            model_id = row["model_id"]
            tx.execute(
                "UPDATE jobs SET state = 'optimizing', stage = 'starting', progress = 0, attempts = attempts + 1, started_at = ?, "
                f"error = NULL, lease = lease + 1, lease_expires = {self.db.clock} + ?, worker = ? WHERE model_id = ?",
                (at, self.lease_seconds, worker, model_id),
            )
            lease = tx.one("SELECT lease FROM jobs WHERE model_id = ?", (model_id,))["lease"]
        return Claim(model_id, lease)

    def renew(self, claim: Claim) -> bool:
        """Extend the lease; False if it is no longer ours (it ran out and the job moved on, or the model is gone)."""
        with self.db.transaction() as tx:
            return tx.execute(f"UPDATE jobs SET lease_expires = {self.db.clock} + ? WHERE {_HELD}", (self.lease_seconds, *_held(claim))) > 0

    def set_progress(self, claim: Claim, stage: str, progress: float) -> None:
        with self.db.transaction() as tx:
            tx.execute(f"UPDATE jobs SET stage = ?, progress = ? WHERE {_HELD}", (stage, progress, *_held(claim)))

    def finish(self, tx: Session, claim: Claim, chosen: str, seconds: float, at: str) -> bool:
        return (
            tx.execute(
                f"UPDATE jobs SET state = 'ready', stage = 'done', progress = 1, finished_at = ?, optimization_seconds = ?, chosen = ?, "
                f"lease_expires = NULL WHERE {_HELD}",
                (at, seconds, chosen, *_held(claim)),
            )
            > 0
        )

    def fail(self, claim: Claim, reason: str, at: str, seconds: float | None = None) -> bool:
        with self.db.transaction() as tx:
            return (
                tx.execute(
                    f"UPDATE jobs SET state = 'failed', error = ?, finished_at = ?, optimization_seconds = ?, lease_expires = NULL WHERE {_HELD}",
                    (reason, at, seconds, *_held(claim)),
                )
                > 0
            )

    def hand_back(self, note: str, worker: str | None = None) -> None:
        """Put optimizing jobs (all, or one worker's) back in the queue without spending an attempt: the process stopped, not the job."""
        with self.db.transaction() as tx:
            where, params = ("state = 'optimizing'", ()) if worker is None else ("state = 'optimizing' AND worker = ?", (worker,))
            for row in tx.all(f"SELECT model_id, notes FROM jobs WHERE {where}{self.db.skip_locked}", params):
                self._requeue(tx, row, note, refund_attempt=True)

    def recover(self, max_attempts: int, at: str) -> list[str]:
        """Re-queue or fail every optimizing job: at the start of a server that alone runs this store's jobs."""
        return self._interrupted("state = 'optimizing'", max_attempts, at, "the server stopped during optimization", "the server stopped without finishing it")

    def requeue_expired(self, max_attempts: int, at: str) -> list[str]:
        """Re-queue or fail the jobs whose lease ran out: their worker died, or lost the database."""
        return self._interrupted(
            f"state = 'optimizing' AND lease_expires < {self.db.clock}",
            max_attempts,
            at,
            "its worker stopped renewing the lease",
            "its worker stopped renewing the lease",
        )

    def counts(self) -> dict[str, int]:
        with self.db.session() as db:
            return {row["state"]: row["n"] for row in db.all("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state")}

    def _interrupted(self, where: str, max_attempts: int, at: str, failed_because: str, cut_short_because: str) -> list[str]:
        actions = []
        with self.db.transaction() as tx:
            for row in tx.all(f"SELECT model_id, attempts, notes FROM jobs WHERE {where}{self.db.skip_locked}"):
                model_id, attempts = row["model_id"], row["attempts"]
                if attempts >= max_attempts:
                    reason = (
                        f"{failed_because} {attempts} time(s); not retried again "
                        f"(upload the model again, perhaps with fewer candidates or latency rounds)"
                    )
                    tx.execute(
                        "UPDATE jobs SET state = 'failed', error = ?, finished_at = ?, lease_expires = NULL WHERE model_id = ?",
                        (reason, at, model_id),
                    )
                    actions.append(f"{model_id}: failed ({reason})")
                else:
                    self._requeue(tx, row, f"attempt {attempts} was cut short ({cut_short_because}); re-queued", refund_attempt=False)
                    actions.append(f"{model_id}: re-queued after an interrupted attempt {attempts}")
        return actions

    @staticmethod
    def _requeue(tx: Session, row: dict, note: str, refund_attempt: bool) -> None:
        tx.execute(
            "UPDATE jobs SET state = 'queued', stage = NULL, progress = 0, attempts = attempts - ?, notes = ?, lease_expires = NULL, "
            "worker = NULL WHERE model_id = ? AND state = 'optimizing'",
            (1 if refund_attempt else 0, json.dumps(json.loads(row["notes"]) + [note]), row["model_id"]),
        )


# A job is held by a claim while it is optimizing under that claim's lease.
_HELD = "model_id = ? AND state = 'optimizing' AND lease = ?"


def _held(claim: Claim) -> tuple[str, int]:
    return (claim.model_id, claim.lease)
