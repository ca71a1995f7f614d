"""Python client of the optiserve HTTP API.

`predict` speaks the Open Inference Protocol v2 with the binary tensor extension: raw bytes both
ways, exact and dtype-preserving. The client depends on the wire format and the contract (wire:
numpy + pydantic) only; torch is imported only when it is handed a tensor.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np
import requests

from wire import WireTensor, decode_response, encode_request, numpy_dtype
from wire.codec import HEADER_LENGTH, wire_tensor
from wire.contract.models import ModelInfo, ModelStatus, RoutingEvent, RoutingEvents, UploadAccepted
from wire.contract.report import Report

from .models import Comparison, Prediction, read_answer
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
        self._names: dict[str, list[str]] = {}  # model -> its input names, from the protocol's metadata
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
        unlabeled: FileLike | None = None,
    ) -> UploadAccepted:
        """Upload a TorchScript model and its calibration batch; optimization starts in the background.

        `unlabeled`: optional, any number of inputs in the calibration batch's layout (same file
        formats), for distillation, reconstruction and certifying fidelity on more samples."""
        files = {"model": _file_part(model, "model.pt"), "calibration": _file_part(calibration, "calibration.pt")}
        if labels is not None:
            files["labels"] = _file_part(labels, "labels.pt")
        if unlabeled is not None:
            files["unlabeled"] = _file_part(unlabeled, "unlabeled.pt")
        form: dict[str, str] = {"replace": "true" if replace else "false"}
        if name is not None:
            form["name"] = name
        if config is not None:
            form["config"] = _config_text(config)
        return read_answer(UploadAccepted, self._request("POST", "/models", files=files, data=form))

    def model(self, model_id: str) -> ModelStatus:
        return read_answer(ModelStatus, self._request("GET", f"/models/{model_id}"))

    def models(self) -> list[ModelInfo]:
        """Every model, without its live status (model() has it)."""
        return [read_answer(ModelInfo, m) for m in self._request("GET", "/models")["models"]]

    def report(self, model_id: str) -> Report:
        """The full optimization report (wire.report_text.table.format_report prints it as a table)."""
        return read_answer(Report, self._request("GET", f"/models/{model_id}/report"))

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

    # ---- live A/B ----

    def route(
        self,
        model_id: str,
        *,
        pin: str | None = None,
        split: float | None = None,
        shadow: float | None = None,
        serve: str = "original",
        sample: float = 0.0,
    ) -> ModelStatus:
        """Set how requests that name no variant are served: exactly one of
        `pin="original"|"optimized"`, `split=share` (to optimized; `sample` of them also compared) or
        `shadow=sample` (`serve` answers, that share also runs on the other variant)."""
        chosen = [name for name, value in (("pin", pin), ("split", split), ("shadow", shadow)) if value is not None]
        if len(chosen) != 1:
            raise ValueError(f"give exactly one of pin, split or shadow (got {chosen or 'none'})")
        if pin is not None:
            policy: dict[str, Any] = {"mode": "pinned", "variant": pin}
        elif split is not None:
            policy = {"mode": "split", "optimized_share": split, "sample": sample}
        else:
            policy = {"mode": "shadow", "serve": serve, "sample": shadow}
        return read_answer(ModelStatus, self._request("PUT", f"/models/{model_id}/routing", json_body=policy))

    def guard(
        self, model_id: str, *, min_agreement: float | None = None, min_cosine: float | None = None, window: int = 500, enabled: bool = True
    ) -> ModelStatus:
        """Roll back to the original automatically when live fidelity falls below these (default: the optimization tolerance)."""
        body = {"min_agreement": min_agreement, "min_cosine": min_cosine, "window": window, "enabled": enabled}
        return read_answer(ModelStatus, self._request("PUT", f"/models/{model_id}/guard", json_body=body))

    def promote(self, model_id: str, reason: str = "") -> ModelStatus:
        """Send all traffic to the optimized variant."""
        return read_answer(ModelStatus, self._request("POST", f"/models/{model_id}/promote", json_body={"reason": reason}))

    def rollback(self, model_id: str, reason: str = "") -> ModelStatus:
        """Send all traffic to the original."""
        return read_answer(ModelStatus, self._request("POST", f"/models/{model_id}/rollback", json_body={"reason": reason}))

    def events(self, model_id: str, limit: int = 100) -> list[RoutingEvent]:
        """Routing changes, oldest first: by users, and the guard's rollbacks with the evidence."""
        return read_answer(RoutingEvents, self._request("GET", f"/models/{model_id}/events", params={"limit": limit})).events

    # ---- inference ----

    def predict(self, model_id: str, *inputs: Any, variant: str | None = None, routing_key: str | None = None) -> Prediction:
        """Run the model; inputs are torch tensors, numpy arrays or nested lists, one per model input.

        Tensors travel as raw bytes both ways (Open Inference Protocol v2, binary extension). Outputs
        are torch tensors when any input was one, numpy arrays otherwise. Without a `variant`, the
        model's routing policy picks one; a `routing_key` keeps a split sticky (same key, same variant)."""
        names = self._input_names(model_id)
        if len(names) != len(inputs):
            raise OptiserveError(400, f"model {model_id!r} takes {len(names)} input(s) {names}; {len(inputs)} given")
        tensors = [wire_tensor(name, _numpy_array(value)) for name, value in zip(names, inputs)]
        body, headers = encode_request(tensors)
        if routing_key is not None:
            headers["X-Routing-Key"] = routing_key
        path = f"/v2/models/{model_id}" + (f"/versions/{variant}" if variant else "") + "/infer"
        response = self._send("POST", path, data=body, headers=headers)
        answer, outputs = decode_response(response.content, response.headers.get(HEADER_LENGTH))
        as_torch = any(_is_torch(value) for value in inputs)
        return Prediction(
            model=answer.model_name,
            variant=answer.model_version or "",
            outputs={t.name: _to_torch(t) if as_torch else np.array(t.array) for t in outputs},
            inference_ms=float((answer.parameters or {}).get("inference_ms", 0.0)),
        )

    def compare(self, model_id: str, *inputs: Any) -> Comparison:
        """Run both variants on the same inputs; returns both outputs, both timings and their fidelity."""
        body = {"model": model_id, "inputs": [_encode(x) for x in inputs], "binary_outputs": True}
        answer = self._request("POST", "/compare", json_body=body)
        as_torch = any(_is_torch(value) for value in inputs)
        answer["outputs"] = {variant: _decode_outputs(outputs, as_torch) for variant, outputs in answer["outputs"].items()}
        return read_answer(Comparison, answer)

    def _input_names(self, model_id: str) -> list[str]:
        if model_id not in self._names:
            metadata = self._request("GET", f"/v2/models/{model_id}")
            self._names[model_id] = [item["name"] for item in metadata["inputs"]]
        return self._names[model_id]

    # ---- plumbing ----

    def _request(self, method: str, path: str, json_body: Any = None, raw: bool = False, **kwargs: Any) -> Any:
        if json_body is not None:
            # Serialized here (allow_nan) rather than by requests: NaN inputs are the server's to judge.
            kwargs["data"] = json.dumps(json_body, ensure_ascii=False).encode("utf-8")
            kwargs.setdefault("headers", {})["Content-Type"] = "application/json"
        response = self._send(method, path, **kwargs)
        return response.content if raw else response.json()

    def _send(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        response = self.session.request(method, self.base_url + path, timeout=self.timeout, **kwargs)
        if response.status_code >= 400:
            raise _error_from(response)
        return response


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
    tensor = wire_tensor("", _numpy_array(value))
    data = base64.b64encode(np.ascontiguousarray(tensor.array).tobytes()).decode("ascii")
    return {"shape": list(tensor.array.shape), "datatype": tensor.datatype, "data_b64": data}


def _is_torch(value: Any) -> bool:
    return type(value).__module__.startswith("torch")


def _numpy_array(value: Any) -> np.ndarray:
    if _is_torch(value):  # torch is already imported by whoever handed us a tensor
        value = value.detach().cpu()
        value = value.dequantize() if value.is_quantized else value
        if str(value.dtype) == "torch.bfloat16":
            value = value.float()
        value = value.numpy()
    return np.ascontiguousarray(value)


def _to_torch(tensor: WireTensor) -> Any:
    import torch

    result = torch.from_numpy(np.array(tensor.array))  # a writable copy
    return result.view(torch.bfloat16) if tensor.datatype == "BF16" else result


def _decode_outputs(objects: list[dict[str, Any]], as_torch: bool) -> dict[str, Any]:
    decoded = {}
    for position, obj in enumerate(objects):
        name = obj.get("name") or f"output_{position}"
        dtype = numpy_dtype(obj["datatype"])
        if obj.get("data_b64") is not None:
            array = np.frombuffer(base64.b64decode(obj["data_b64"]), dtype=dtype).reshape(obj["shape"])
        else:
            array = np.asarray(obj["data"], dtype=dtype).reshape(obj["shape"])
        tensor = WireTensor(name, obj["datatype"], array)
        decoded[name] = _to_torch(tensor) if as_torch else np.array(array)
    return decoded


def _error_from(response: requests.Response) -> OptiserveError:
    try:
        body = response.json()
        error = body["error"]
        if isinstance(error, str):  # the Open Inference Protocol's shape
            return OptiserveError(response.status_code, error, None, body)
        return OptiserveError(response.status_code, error["message"], error.get("code"), body)
    except (ValueError, KeyError, TypeError):
        return OptiserveError(response.status_code, response.text[:500] or response.reason)
