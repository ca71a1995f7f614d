"""A bare LitServe server around a TorchScript file: what LitServe itself costs per request.

    python bench/baselines/bare_litserve.py MODEL.pt PORT

One worker, one torch thread, no batching; POST /predict takes and returns one JSON tensor
({"shape": [...], "data": [...]}). For bench/serving.py only.
"""

from __future__ import annotations

import sys

import litserve as ls
import torch

from optimizer_pipeline.measure.allocator import pin_malloc_thresholds


class TorchScriptAPI(ls.LitAPI):
    def __init__(self, model_path: str) -> None:
        super().__init__()
        self.model_path = model_path

    def setup(self, device: str) -> None:
        torch.set_num_threads(1)
        pin_malloc_thresholds()
        self.model = torch.jit.load(self.model_path)

    def decode_request(self, request: dict) -> torch.Tensor:
        return torch.tensor(request["data"], dtype=torch.float32).reshape(request["shape"])

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.model(x)

    def encode_response(self, output: torch.Tensor) -> dict:
        return {"shape": list(output.shape), "data": output.reshape(-1).tolist()}


if __name__ == "__main__":
    server = ls.LitServer(TorchScriptAPI(sys.argv[1]), accelerator="cpu", workers_per_device=1)
    server.run(host="127.0.0.1", port=int(sys.argv[2]), num_api_servers=1, generate_client_file=False, log_level="warning")
