"""Management operations behind the HTTP routes: validate uploads, then read and write the store.

Runs in the API-server processes. Nothing is indexed unless the upload passed validation, which
loads the model and runs two calibration samples through it in a confined child process
(validation.py), never here.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from optimizer_pipeline import InvalidConfigError, PipelineConfig, Report, parse_config, render_report_html, stored_config
from wire.contract.models import Deleted, ModelInfo, ModelMeta, UploadAccepted

from .errors import ApiError, not_found, status_code_name
from .store import NameTakenError, Store, new_model_id, now
from .jobs.validation import ValidationLimits, validate_upload

# A model's name. Used with fullmatch: `$` alone would let a trailing newline through.
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


@dataclass(frozen=True)
class Upload:
    model: bytes
    calibration: bytes
    labels: bytes | None = None
    config: str | None = None
    name: str | None = None
    filename: str | None = None
    replace: bool = False
    # The unlabeled set: a file the HTTP layer spooled to disk, copied into the store in chunks.
    unlabeled: BinaryIO | None = None


@dataclass(frozen=True)
class UploadLimits:
    """Per-part size limits of an upload (the body limit in limits.py allows their sum)."""

    max_upload_bytes: int
    max_unlabeled_bytes: int

    def check(self, part_sizes: dict[str, int | None]) -> None:
        """413 naming the setting when the model, calibration and labels together, or the unlabeled part, are too big."""
        unlabeled = part_sizes.pop("unlabeled", None)
        if unlabeled is not None and unlabeled > self.max_unlabeled_bytes:
            raise ApiError(
                413,
                status_code_name(413),
                f"the unlabeled part is {unlabeled} bytes, above the limit of {self.max_unlabeled_bytes} bytes "
                f"(OPTISERVE_MAX_UNLABELED_BYTES); send fewer samples or raise the limit",
            )
        rest = sum(size or 0 for size in part_sizes.values())
        if rest > self.max_upload_bytes:
            raise ApiError(
                413,
                status_code_name(413),
                f"the model, calibration and labels parts are {rest} bytes together, above the limit of "
                f"{self.max_upload_bytes} bytes (OPTISERVE_MAX_UPLOAD_BYTES)",
            )


class ManagementPlane:
    def __init__(self, store: Store, limits: ValidationLimits, parts: UploadLimits | None = None) -> None:
        self.store = store
        self.limits = limits
        self.parts = parts

    def create_model(self, upload: Upload) -> UploadAccepted:
        model_id = new_model_id()
        name = self._name_for(upload, model_id)
        config = _parse_config(upload.config)
        if not upload.replace and self.store.has_name(name):
            raise _name_taken(name)
        files = {"original.pt": upload.model, "calibration.bin": upload.calibration}
        if upload.labels is not None:
            files["labels.bin"] = upload.labels
        directory = self.store.stage_files(model_id, files)
        try:
            if upload.unlabeled is not None:
                self.store.stage_stream(model_id, "unlabeled.bin", upload.unlabeled)
            summary = validate_upload(directory, upload.labels is not None, config, self.limits, has_unlabeled=upload.unlabeled is not None)
            meta = ModelMeta(
                id=model_id, name=name, created_at=now(), summary=summary, config=stored_config(config), has_labels=upload.labels is not None,
                has_unlabeled=upload.unlabeled is not None,
            )
            replaced = self.store.add_model(meta, replace=upload.replace)
        except NameTakenError:
            raise _name_taken(name) from None
        finally:
            if not self.store.exists(model_id):
                self.store.discard_staged(model_id)
        return UploadAccepted(id=model_id, name=name, state="queued", status_url=f"/models/{model_id}", replaced=replaced)

    def list_models(self) -> list[ModelInfo]:
        return self.store.list()

    def model(self, ref: str) -> ModelInfo:
        info = self.store.get(ref)
        if info is None:
            raise not_found(ref)
        return info

    def report_path(self, ref: str) -> Path:
        info = self.model(ref)
        path = self.store.file(info.id, "report.json") if info.state == "ready" else None
        if path is None:
            detail = f"failed: {info.error}" if info.state == "failed" else f"{info.state} ({info.stage or 'waiting'})"
            raise ApiError(409, "report_not_ready", f"model {info.name!r} has no report yet; its optimization is {detail}")
        return path

    def report_html(self, ref: str) -> str:
        """The report as one self-contained page (scatter plot of the trials and the table)."""
        report = Report.model_validate_json(self.report_path(ref).read_text())
        return render_report_html(report)

    def variant_path(self, ref: str, variant: str) -> tuple[ModelInfo, Path]:
        info = self.model(ref)
        found = info.variant(variant)
        if found is None:
            if variant not in ("original", "optimized"):
                raise ApiError(404, "variant_not_found", f"unknown variant {variant!r}; variants are 'original' and 'optimized'")
            raise ApiError(409, "variant_not_available", f"model {info.name!r} has no {variant} variant (state: {info.state})")
        path = self.store.file(info.id, found.filename)
        if path is None:
            raise not_found(info.id)  # deleted since the lookup
        return info, path

    def reset_health(self, ref: str) -> ModelInfo:
        """Serve a model marked unhealthy again (after its timeouts were looked into)."""
        info = self.model(ref)
        self.store.reset_health(info.id)
        return self.model(info.id)

    def delete(self, ref: str) -> Deleted:
        info = self.model(ref)
        self.store.delete(info.id)
        return Deleted(id=info.id)

    def _name_for(self, upload: Upload, model_id: str) -> str:
        if upload.name is not None:
            if not NAME_PATTERN.fullmatch(upload.name):
                raise ApiError(
                    422,
                    "invalid_name",
                    f"invalid name {upload.name!r}: use 1 to 64 characters from a-z, 0-9, '.', '_' and '-', "
                    "starting with a letter or digit",
                )
            return upload.name
        # No name given: derive one from the file name, made unique rather than refused.
        stem = Path(upload.filename or "model").stem.lower()
        derived = re.sub(r"[^a-z0-9._-]+", "-", stem).strip("-._")[:50] or "model"
        return f"{derived}-{model_id[:6]}" if self.store.has_name(derived) else derived


def _parse_config(text: str | None) -> PipelineConfig | None:
    """The upload's config in its typed form, parsed once here: what is validated, stored and run."""
    if text is None or not text.strip():
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ApiError(422, "invalid_config", f"config is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ApiError(422, "invalid_config", f"config must be a JSON object, got {type(value).__name__}")
    try:
        return parse_config(value)
    except InvalidConfigError as exc:
        raise ApiError(422, "invalid_config", str(exc)) from None


def _name_taken(name: str) -> ApiError:
    return ApiError(409, "name_taken", f"a model named {name!r} exists; choose another name or send replace=true")
