"""The model store: a model index, a job queue and an artifact store, embedded (SQLite + a local
directory) or shared (PostgreSQL + an S3-compatible object store). See facade.py."""

from __future__ import annotations

from pathlib import Path

from ..settings import Settings
from .artifacts import LocalArtifacts
from .database import PostgresDatabase, SqliteDatabase
from .facade import Store
from .index import NameTakenError
from .queue import Claim
from .stamps import new_model_id, now

__all__ = ["Claim", "NameTakenError", "Store", "new_model_id", "now", "open_store"]


def open_store(settings: Settings, read_only: bool = False) -> Store:
    """The store the settings name: a directory, or a postgresql:// DSN with s3:// artifacts.

    `read_only`: for inference workers, whose writes go through the main process (record_channel.py)."""
    if settings.shared:
        from .s3_artifacts import S3Artifacts

        assert settings.artifacts is not None  # the settings' validator insists
        dsn = (settings.worker_store or settings.store) if read_only else settings.store
        database = PostgresDatabase(dsn, read_only=read_only)
        return Store(database, S3Artifacts(settings.artifacts, settings.local_dir / "cache"), settings.job_lease)
    root = Path(settings.store)
    return Store(SqliteDatabase(root / "index.sqlite3", read_only=read_only), LocalArtifacts(root / "models"), settings.job_lease)
