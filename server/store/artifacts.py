"""Where a model's files live: the artifact store interface and its embedded backend (a local directory).

Files are complete in the artifact store before the index row that names them commits, so a crash
between the two leaves an unnamed file for `sweep` to remove, never a row without its file.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Protocol

from optimizer_pipeline import atomic_write_bytes


class ArtifactStore(Protocol):
    def staging(self, model_id: str) -> Path:
        """A local directory where an upload's files are written and validated before `publish`."""
        ...

    def publish(self, model_id: str) -> dict[str, str]:
        """Store every staged file of the model; {file name: key}, each file complete on return."""
        ...

    def release_staging(self, model_id: str) -> None:
        """Forget the staging copy once the index names the published files."""
        ...

    def put(self, model_id: str, files: dict[str, bytes]) -> dict[str, str]:
        """Store files of a known model (a job's results); {file name: key}, complete on return."""
        ...

    def fixed_key(self, model_id: str, name: str) -> str | None:
        """The key when it follows from the names alone; None when only the index knows it (content-addressed)."""
        ...

    def local_path(self, key: str) -> Path | None:
        """The file as a local path (fetched first if the store is remote); None if it is not stored."""
        ...

    def delete_model(self, model_id: str) -> None:
        """Remove every file of the model (the staging copy too)."""
        ...

    def sweep(self, known_ids: set[str], known_keys: set[str], min_age_seconds: float) -> list[str]:
        """Remove what no index row names (older than `min_age_seconds`, so an upload in flight is spared); what it removed."""
        ...

    def writable(self, model_id: str | None) -> tuple[Path, ...]:
        """Local directories a process that reads files (and writes the model's, if given) must be allowed to write."""
        ...

    def readable(self) -> tuple[Path, ...]:
        """Local directories a process that reads models' files must be allowed to read."""
        ...


class LocalArtifacts:
    """The embedded backend: `<store>/models/<model id>/<file name>`, written atomically in place."""

    def __init__(self, models_dir: Path) -> None:
        self.models_dir = models_dir

    def staging(self, model_id: str) -> Path:
        # Staged where the model will live: publishing is then nothing more than the index commit.
        return self.models_dir / model_id

    def publish(self, model_id: str) -> dict[str, str]:
        return {path.name: self._key(model_id, path.name) for path in self.staging(model_id).iterdir() if not path.name.startswith(".")}

    def release_staging(self, model_id: str) -> None:
        pass  # the staged files are the stored ones

    def put(self, model_id: str, files: dict[str, bytes]) -> dict[str, str]:
        for name, data in files.items():
            atomic_write_bytes(self.models_dir / model_id / name, data)
        return {name: self._key(model_id, name) for name in files}

    def fixed_key(self, model_id: str, name: str) -> str | None:
        return self._key(model_id, name)

    def local_path(self, key: str) -> Path | None:
        path = self.models_dir / key
        return path if path.exists() else None

    def delete_model(self, model_id: str) -> None:
        shutil.rmtree(self.models_dir / model_id, ignore_errors=True)

    def sweep(self, known_ids: set[str], known_keys: set[str], min_age_seconds: float) -> list[str]:
        # Directories whose index row never committed, and temp files of interrupted atomic writes.
        # A model's files have fixed names, so a known model's directory holds no orphan but those.
        removed = []
        cutoff = time.time() - min_age_seconds
        self.models_dir.mkdir(parents=True, exist_ok=True)
        for directory in self.models_dir.iterdir():
            if directory.is_dir() and directory.stat().st_mtime >= cutoff:
                continue
            if directory.is_dir() and directory.name not in known_ids:
                shutil.rmtree(directory, ignore_errors=True)
                removed.append(directory.name)
            elif directory.is_dir():
                for temp in directory.glob(".*.tmp"):
                    temp.unlink(missing_ok=True)
                    removed.append(f"{directory.name}/{temp.name}")
        return removed

    def writable(self, model_id: str | None) -> tuple[Path, ...]:
        return () if model_id is None else (self.models_dir / model_id,)

    def readable(self) -> tuple[Path, ...]:
        self.models_dir.mkdir(parents=True, exist_ok=True)
        return (self.models_dir,)

    @staticmethod
    def _key(model_id: str, name: str) -> str:
        return f"{model_id}/{name}"
