"""The one settings object: command-line flags override OPTISERVE_* environment variables override defaults."""

from __future__ import annotations

import os
from importlib.util import find_spec
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OPTISERVE_", extra="ignore")

    host: Literal["127.0.0.1", "0.0.0.0", "::"] = Field("127.0.0.1", description="interface: 127.0.0.1 (local), 0.0.0.0 or :: (all)")
    port: int = Field(8000, ge=1024, le=65535, description="TCP port")
    store: str = Field(
        "store",
        description="model store: a directory (embedded: SQLite index, model files, metrics) or a postgresql:// DSN "
        "(shared by API replicas and workers; needs --artifacts)",
    )
    worker_store: str | None = Field(
        None,
        description="postgresql:// DSN the inference workers read a shared store with: a role with SELECT only "
        "(deploy/README.md); default: --store, in read-only sessions",
    )
    artifacts: str | None = Field(None, description="s3://bucket/prefix holding a shared store's model files (endpoint and keys: AWS_* variables)")
    state_dir: Path | None = Field(
        None, description="this process's local state: metrics, artifact cache, generated API key; default: the store directory, or ./optiserve-state"
    )
    jobs: bool = Field(True, description="run optimization jobs in this server; --no-jobs serves only (`optiserve worker` runs them)")
    job_lease: float = Field(
        30.0, gt=0, le=3600, description="seconds a worker's claim on a job lasts unrenewed; after it another worker takes the job"
    )
    workers: int = Field(
        2, ge=1, le=64, description="inference worker processes for /predict; more than --api-servers, so a slow model leaves others a free worker"
    )
    compare_workers: int = Field(1, ge=1, le=64, description="inference worker processes for /compare")
    api_servers: int = Field(1, ge=1, le=64, description="HTTP server processes")
    # One share of the cores per /predict worker: two workers of two threads each on two cores
    # spent a third less of their CPU on forwards (mid ResNet at c=8: 1.3-1.7x the samples/s with
    # one thread each; docs/benchmarks.md).
    worker_threads: int = Field(
        default_factory=lambda data: max(1, (os.cpu_count() or 1) // data["workers"]), ge=1, le=256,
        description="torch threads per inference worker (default: the CPU count divided by --workers, at least 1)",
    )
    job_threads: int = Field(1, ge=1, le=256, description="torch threads of the background optimization job")
    job_nice: int = Field(10, ge=0, le=19, description="CPU niceness of optimization jobs, so serving keeps priority")
    job_timeout: float = Field(
        3600.0, gt=0, le=7 * 86400, description="wall-clock limit of one optimization job; past it the job fails (not retried)"
    )
    job_concurrency: int = Field(1, ge=1, le=64, description="optimization jobs a runner (the server's, or `optiserve worker`) runs at once")
    job_step_timeout: float = Field(
        600.0,
        gt=0,
        le=86400,
        description="upper bound on the deadline of one model-running step of a job (an upload's candidate_timeout is cut to it); "
        "a candidate past its deadline fails alone and the search goes on",
    )
    job_memory_bytes: int = Field(16 * 2**30, ge=256 * 2**20, description="memory one optimization job may map beyond torch itself")
    job_attempts: int = Field(2, ge=1, le=10, description="runs a job gets when the server stops during it")
    max_upload_bytes: int = Field(512 * 2**20, ge=1024, description="largest request body accepted (413 above)")
    max_json_bytes: int = Field(
        8 * 2**20,
        ge=1024,
        description="largest JSON inference body (/predict, /compare, a /v2 JSON part) accepted (413 above: send big tensors "
        "as /v2 binary data)",
    )
    shm_budget_bytes: int | None = Field(
        None,
        ge=0,
        description="bytes of /dev/shm that large tensors in flight may hold at once (beyond: small ones take the slower "
        "queue, large ones get 503 shm_full); default: half of /dev/shm",
    )
    max_unlabeled_bytes: int = Field(
        2**30,
        ge=0,
        description="largest `unlabeled` part of an upload (413 above), on top of max_upload_bytes; streamed to disk, never held in memory; 0 refuses unlabeled sets",
    )
    max_batch_size: int = Field(16, ge=1, le=4096, description="requests merged into one forward call")
    cache_size: int = Field(8, ge=1, le=1024, description="loaded variants kept per inference worker (LRU)")
    variant_cache_bytes: int = Field(
        0,
        ge=0,
        description="bytes of loaded variants (what each held once loaded, at least its file size) the /predict workers keep together, an equal share "
        "each (a /compare worker keeps one share too), least recently used dropped first; a variant larger than a "
        "share is still served (loaded, used, dropped); 0: only --cache-size bounds it",
    )
    grpc_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="port of OIP v2 over gRPC (KServe's GRPCInferenceService; Triton uses 8001); 0 (default) turns it off",
    )
    request_timeout: float = Field(60.0, gt=0, le=3600, description="seconds from a request's arrival to its answer (504 after)")
    forward_timeout: float = Field(
        30.0, gt=0, le=3600, description="hard limit of one forward call; past it the worker is restarted and that model's requests get 504"
    )
    unhealthy_after: int = Field(
        3, ge=1, le=1000, description="failures of a model's code (forward timeouts, crashed workers, memory cap hits) after which it answers 503 until reset"
    )
    worker_memory_bytes: int = Field(
        4 * 2**30,
        ge=256 * 2**20,
        description="address space an inference worker may map beyond torch itself (its loaded models included); a request past it gets 507",
    )
    validation_timeout: float = Field(30.0, gt=0, le=3600, description="seconds an upload's validation may run (422 after)")
    validation_idle_seconds: float = Field(
        30.0, gt=0, le=86400, description="seconds without an upload after which the validation process pool (about 300 MB) ends; the next upload starts it again"
    )
    validation_memory_bytes: int = Field(
        2 * 2**30, ge=64 * 2**20, description="memory an upload's validation may allocate on top of torch itself (422 above)"
    )
    auth: bool = Field(True, description="require 'Authorization: Bearer <key>' on routes that change models")
    auth_inference: bool = Field(False, description="require the key on inference routes as well")
    insecure: bool = Field(False, description="allow auth off on a non-loopback host")
    api_key: SecretStr | None = Field(
        None, description="the API key; default (directory store only): <store>/api-key, generated at first start"
    )
    log_level: str = Field("warning", pattern="^(critical|error|warning|info|debug)$", description="server log level")

    @model_validator(mode="after")
    def _shared_store_has_artifacts(self) -> Settings:
        if self.shared and not (self.artifacts or "").startswith("s3://"):
            raise ValueError("a postgresql:// store keeps its model files in an object store: pass --artifacts s3://bucket/prefix")
        if self.worker_store is not None and not (self.shared and is_postgres_dsn(self.worker_store)):
            raise ValueError("--worker-store is a postgresql:// DSN for the workers of a postgresql:// store")
        if not self.shared and self.artifacts is not None:
            raise ValueError("--artifacts goes with a postgresql:// store; a directory store keeps its files in <store>/models")
        if self.shared and (missing := [name for name in ("psycopg", "psycopg_pool", "boto3") if not _installed(name)]):
            raise ValueError(
                f"a postgresql:// store needs the [shared] extra ({', '.join(missing)} not installed): "
                "pip install 'optiserve[shared]' (in a checkout of optiserve: pip install -e '.[shared]')"
            )
        if self.shared and self.auth and self.api_key is None:
            # A key generated per process would differ between replicas behind one Service.
            raise ValueError("replicas of a shared store must share one API key: set OPTISERVE_API_KEY (or --api-key)")
        return self

    @model_validator(mode="after")
    def _auth_off_only_on_loopback(self) -> Settings:
        if not self.auth and self.host not in ("127.0.0.1", "::1") and not self.insecure:
            raise ValueError(f"auth is off on host {self.host}, reachable from other machines: pass --insecure to mean it")
        return self

    def without_secrets(self) -> Settings:
        """These settings for a process that runs model code: no API key (only the main process and
        the HTTP front end check it; a memory-safety bug in a model must find nothing to steal)."""
        return self.model_copy(update={"api_key": None})

    @property
    def url(self) -> str:
        shown = "127.0.0.1" if self.host == "0.0.0.0" else self.host
        return f"http://{shown}:{self.port}"

    @property
    def shared(self) -> bool:
        """A store that API replicas and job workers on many machines share (PostgreSQL + S3)."""
        return is_postgres_dsn(self.store)

    @property
    def local_dir(self) -> Path:
        """This process's own directory: the store itself when embedded."""
        if self.state_dir is not None:
            return self.state_dir
        return Path("optiserve-state") if self.shared else Path(self.store)

    @property
    def store_description(self) -> str:
        if not self.shared:
            return str(Path(self.store).resolve())
        return f"{_without_password(self.store)} + {self.artifacts}"

    @property
    def variant_bytes_per_worker(self) -> int:
        """Each inference worker's share of variant_cache_bytes (0: unbounded): the bound is the
        server's, since every /predict worker may load every variant."""
        return max(1, self.variant_cache_bytes // self.workers) if self.variant_cache_bytes else 0

    @property
    def held_dir(self) -> Path:
        """Where each inference worker notes the requests it holds, for the main process to answer if it dies."""
        return self.local_dir / "workers"

    @property
    def metrics_dir(self) -> Path:
        # Wiped by the main process at every start: the counters describe this run only.
        return self.local_dir / "metrics"


def _installed(module: str) -> bool:
    try:
        return find_spec(module) is not None
    except ValueError:  # in sys.modules without a spec: blocked, or half imported
        return False


# Read once into Settings, then removed from the process environment before any child starts.
SECRET_VARIABLES = ("OPTISERVE_API_KEY",)


def is_postgres_dsn(location: str) -> bool:
    return location.startswith(("postgresql://", "postgres://"))


def _without_password(dsn: str) -> str:
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")))
