"""Python client of the optiserve HTTP API.

Tensors travel as raw bytes (base64 in the JSON body, the `data_b64` extension of the Open
Inference Protocol tensor object): exact, dtype-preserving, and far cheaper than JSON numbers.
torch is imported only when tensors are sent or received, so listing models stays light.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import requests

from .models import Comparison, ModelStatus, Prediction, UploadResult
from .progress import ProgressBar

FileLike = str | os.PathLike[str] | bytes | IO[bytes]


class OptiserveError(Exception):
    """The server answered with an error: `status` is the HTTP status, `message` what to fix."""

    def __init__(self, status: int, message: str, code: str | None = None, body: Any = None) -> None:
        super().__init__(f"{status} {code}: {message}" if code else f"{status}: {message}")
        self.status = status
        self.message = message
        self.code = code
        self.body = body


class OptiserveClient:
    def __init__(self, base_url: str = "http://127.0.0.1:8000", timeout: float = 60.0, api_key: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        key = api_key or find_api_key()
        if key:
            self.session.headers["Authorization"] = f"Bearer {key}"
        # Responses are mostly base64 or small JSON: gzip would cost server CPU and save little.
        self.session.headers["Accept-Encoding"] = "identity"

    # ---- management ----

    def upload(
        self,
        model: FileLike,
        calibration: FileLike,
        labels: FileLike | None = None,
        config: Mapping[str, Any] | str | os.PathLike[str] | None = None,
        name: str | None = None,
        replace: bool = False,
    ) -> UploadResult:
        """Upload a TorchScript model and its calibration batch; optimization starts in the background."""
        files = {"model": _file_part(model, "model.pt"), "calibration": _file_part(calibration, "calibration.pt")}
        if labels is not None:
            files["labels"] = _file_part(labels, "labels.pt")
        form: dict[str, str] = {"replace": "true" if replace else "false"}
        if name is not None:
            form["name"] = name
        if config is not None:
            form["config"] = _config_text(config)
        return UploadResult.model_validate(self._request("POST", "/models", files=files, data=form))

    def model(self, model_id: str) -> ModelStatus:
        return ModelStatus.model_validate(self._request("GET", f"/models/{model_id}"))

    def models(self) -> list[ModelStatus]:
        return [ModelStatus.model_validate(m) for m in self._request("GET", "/models")["models"]]

    def report(self, model_id: str):
        """The full optimization report (optimizer_pipeline.report.Report)."""
        from optimizer_pipeline.report import Report

        return Report.model_validate(self._request("GET", f"/models/{model_id}/report"))

    def delete(self, model_id: str) -> None:
        self._request("DELETE", f"/models/{model_id}")

    def download(self, model_id: str, variant: str = "optimized") -> bytes:
        """The variant's TorchScript file."""
        return self._request("GET", f"/models/{model_id}/variants/{variant}", raw=True)

    def wait(self, model_id: str, timeout: float | None = None, progress: bool = True, poll_seconds: float = 0.5) -> ModelStatus:
        """Poll until the optimization is ready or failed (a failed job still serves the original)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        bar = ProgressBar() if progress else None
        try:
            while True:
                status = self.model(model_id)
                if bar is not None:
                    bar.update(f"{status.state}: {status.stage or 'waiting'}", 1.0 if status.finished else status.progress)
                if status.finished:
                    return status
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"model {model_id} is still {status.state} after {timeout} s")
                time.sleep(poll_seconds)
        finally:
            if bar is not None:
                bar.close()

    # ---- inference ----

    def predict(self, model_id: str, *inputs: Any, variant: str | None = None) -> Prediction:
        """Run the model; inputs are torch tensors, numpy arrays or nested lists, one per model input."""
        body = {"model": model_id, "inputs": [_encode(x) for x in inputs], "binary_outputs": True}
        if variant is not None:
            body["variant"] = variant
        answer = self._request("POST", "/predict", json_body=body)
        answer["outputs"] = _decode_outputs(answer["outputs"])
        return Prediction.model_validate(answer)

    def compare(self, model_id: str, *inputs: Any) -> Comparison:
        """Run both variants on the same inputs; returns both outputs, both timings and their fidelity."""
        body = {"model": model_id, "inputs": [_encode(x) for x in inputs], "binary_outputs": True}
        answer = self._request("POST", "/compare", json_body=body)
        answer["outputs"] = {variant: _decode_outputs(outputs) for variant, outputs in answer["outputs"].items()}
        return Comparison.model_validate(answer)

    # ---- plumbing ----

    def _request(self, method: str, path: str, json_body: Any = None, raw: bool = False, **kwargs: Any) -> Any:
        data = kwargs.pop("data", None)
        if json_body is not None:
            # Serialized here (allow_nan) rather than by requests: NaN inputs are the server's to judge.
            data = json.dumps(json_body, ensure_ascii=False).encode("utf-8")
            kwargs.setdefault("headers", {})["Content-Type"] = "application/json"
        response = self.session.request(method, self.base_url + path, data=data, timeout=self.timeout, **kwargs)
        if response.status_code >= 400:
            raise _error_from(response)
        return response.content if raw else response.json()


def find_api_key() -> str | None:
    """OPTISERVE_API_KEY, or else the key a local server generated in its store (OPTISERVE_STORE, default ./store)."""
    if os.environ.get("OPTISERVE_API_KEY"):
        return os.environ["OPTISERVE_API_KEY"]
    path = Path(os.environ.get("OPTISERVE_STORE", "store")) / "api-key"
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def _file_part(source: FileLike, default_name: str) -> tuple[str, bytes | IO[bytes]]:
    if isinstance(source, (bytes, bytearray)):
        return default_name, bytes(source)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        return path.name, path.read_bytes()
    return Path(getattr(source, "name", default_name)).name, source


def _config_text(config: Mapping[str, Any] | str | os.PathLike[str]) -> str:
    """A dict, JSON text (starts with '{'), or the path of a JSON file."""
    if isinstance(config, Mapping):
        return json.dumps(dict(config))
    if isinstance(config, os.PathLike) or (isinstance(config, str) and not config.lstrip().startswith("{")):
        return Path(config).read_text()
    return config


def _encode(value: Any) -> Any:
    """Tensors and arrays go as raw bytes; plain lists as they are (the server casts to the model's dtype)."""
    if isinstance(value, (list, tuple)):
        return list(value)
    import torch

    from server.codec import to_b64, wire_ready

    tensor = value if isinstance(value, torch.Tensor) else torch.from_numpy(_numpy_array(value))
    tensor, datatype = wire_ready(tensor)
    return {"shape": list(tensor.shape), "datatype": datatype, "data_b64": to_b64(tensor)}


def _numpy_array(value: Any):
    import numpy

    array = numpy.ascontiguousarray(value)
    if not array.flags.writeable:
        array = array.copy()
    return array


def _decode_outputs(objects: list[dict[str, Any]]) -> dict[str, Any]:
    import torch

    from server.codec import TORCH_DTYPES, from_b64

    decoded = {}
    for position, obj in enumerate(objects):
        name = obj.get("name") or f"output_{position}"
        if obj.get("data_b64") is not None:
            decoded[name] = from_b64(obj["data_b64"], obj["datatype"], obj["shape"])
        else:
            decoded[name] = torch.tensor(obj["data"], dtype=TORCH_DTYPES[obj["datatype"]]).reshape(obj["shape"])
    return decoded


def _error_from(response: requests.Response) -> OptiserveError:
    try:
        body = response.json()
        error = body["error"]
        return OptiserveError(response.status_code, error["message"], error.get("code"), body)
    except (ValueError, KeyError, TypeError):
        return OptiserveError(response.status_code, response.text[:500] or response.reason)
