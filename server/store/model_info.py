"""A ModelInfo from the index's rows: the lookup every batch makes, so its parse is cached."""

from __future__ import annotations

import functools
import json

from wire.contract.models import Health, JobStatus, ModelInfo, ModelMeta, VariantInfo
from wire.contract.report import Chosen
from wire.contract.routing import Guard

JOB_COLUMNS = ("state", "stage", "progress", "error", "attempts", "queued_at", "started_at", "finished_at", "optimization_seconds", "chosen", "notes")
_INFO_COLUMNS = ("id", "meta", *JOB_COLUMNS, "timeouts", "crashes", "out_of_memory", "unhealthy", "policy", "guard", "revision")
_VARIANT_COLUMNS = ("name", "runtime", "filename", "size_bytes", "version")

INFO_SQL = (
    f"SELECT m.id, m.meta, {', '.join(JOB_COLUMNS)}, COALESCE(h.timeouts, 0) AS timeouts, "
    "COALESCE(h.crashes, 0) AS crashes, COALESCE(h.out_of_memory, 0) AS out_of_memory, h.unhealthy, "
    "r.policy, r.guard, COALESCE(r.revision, 0) AS revision "
    "FROM models m JOIN jobs j ON j.model_id = m.id LEFT JOIN health h ON h.model_id = m.id "
    "LEFT JOIN routing r ON r.model_id = m.id "
    "WHERE m.id = ? OR m.name = ?"
)
VARIANT_SQL = f"SELECT {', '.join(_VARIANT_COLUMNS)} FROM variants WHERE model_id = ? ORDER BY name DESC"


@functools.lru_cache(maxsize=1024)
def model_info(values: tuple, variant_values: tuple[tuple, ...]) -> ModelInfo:
    """A ModelInfo from the raw column values of INFO_SQL and VARIANT_SQL (hashable, so cached)."""
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
    health = Health(
        healthy=row["unhealthy"] is None, reason=row["unhealthy"], timeouts=row["timeouts"], crashes=row["crashes"], out_of_memory=row["out_of_memory"]
    )
    return ModelInfo(
        **dict(meta),  # its config stays the typed one
        **job.model_dump(),
        variants=variant_infos,
        default_variant=default,
        health=health,
        routing=None if row["policy"] is None else json.loads(row["policy"]),
        guard=None if row["guard"] is None else Guard.model_validate_json(row["guard"]),
        routing_revision=row["revision"],
    )
