"""The shared artifact backend: an S3-compatible object store, read through a local cache.

Objects are content-addressed (`<prefix>models/<model id>/<sha256>`): an object never changes once
written, so a cached copy is never stale and a replica that reads while a job writes a new variant
reads a whole old file or a whole new one. The endpoint and credentials come from boto3's own
environment (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...), so any S3-compatible store works.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from optimizer_pipeline import atomic_write_bytes

from .per_process import PerProcess


def _new_client() -> Any:
    import boto3

    return boto3.session.Session().client("s3")


def parse_s3_url(url: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix` -> ("bucket", "some/prefix/")."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise ValueError(f"{url!r} is not an s3://bucket/prefix URL")
    prefix = parts.path.strip("/")
    return parts.netloc, f"{prefix}/" if prefix else ""


class S3Artifacts:
    def __init__(self, url: str, cache_dir: Path) -> None:
        self.bucket, self.prefix = parse_s3_url(url)
        self.cache_dir = cache_dir
        # boto3 clients are thread-safe but must not cross a fork: one per process.
        self._client: PerProcess[Any] = PerProcess(_new_client)

    def client(self) -> Any:
        return self._client.get()

    def staging(self, model_id: str) -> Path:
        return self.cache_dir / "staging" / model_id

    def publish(self, model_id: str) -> dict[str, str]:
        staged = self.staging(model_id)
        return self.put(model_id, {path.name: path.read_bytes() for path in staged.iterdir() if not path.name.startswith(".")})

    def release_staging(self, model_id: str) -> None:
        shutil.rmtree(self.staging(model_id), ignore_errors=True)

    def put(self, model_id: str, files: dict[str, bytes]) -> dict[str, str]:
        keys = {}
        for name, data in files.items():
            key = f"{self.prefix}models/{model_id}/{hashlib.sha256(data).hexdigest()}"
            # A PUT is atomic: the object is absent or complete, never partial.
            self.client().put_object(Bucket=self.bucket, Key=key, Body=data)
            self._cache(key, data)
            keys[name] = key
        return keys

    def fixed_key(self, model_id: str, name: str) -> str | None:
        return None

    def local_path(self, key: str) -> Path | None:
        path = self.cache_dir / "objects" / key
        if path.exists():
            return path
        from botocore.exceptions import ClientError

        try:
            body = self.client().get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise
        return self._cache(key, body)

    def delete_model(self, model_id: str) -> None:
        self._delete(key for key, _ in self.objects(f"{self.prefix}models/{model_id}/"))
        shutil.rmtree(self.cache_dir / "objects" / f"{self.prefix}models" / model_id, ignore_errors=True)
        self.release_staging(model_id)

    def sweep(self, known_ids: set[str], known_keys: set[str], min_age_seconds: float) -> list[str]:
        # Other replicas upload meanwhile: an object younger than the grace time may be one whose
        # row is about to commit, so only older ones are orphans.
        cutoff = time.time() - min_age_seconds
        orphans = [key for key, modified in self.objects(f"{self.prefix}models/") if key not in known_keys and modified < cutoff]
        self._delete(orphans)
        return orphans

    def writable(self, model_id: str | None) -> tuple[Path, ...]:
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        return (self.cache_dir,)

    def readable(self) -> tuple[Path, ...]:
        return self.writable(None)

    def _cache(self, key: str, data: bytes) -> Path:
        path = self.cache_dir / "objects" / key
        atomic_write_bytes(path, data)  # readers in other processes see no file or a whole one
        return path

    def objects(self, prefix: str) -> list[tuple[str, float]]:
        """(key, last modified) of every object under `prefix`."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return [(item["Key"], item["LastModified"].timestamp()) for page in pages for item in page.get("Contents", [])]

    def _delete(self, keys: Any) -> None:
        batch = [{"Key": key} for key in keys]
        for start in range(0, len(batch), 1000):  # the API's limit per request
            self.client().delete_objects(Bucket=self.bucket, Delete={"Objects": batch[start : start + 1000], "Quiet": True})
