"""The floor of serving a TorchScript file over HTTP: one plain FastAPI route, no queue, no batching.

    python bench/baselines/bare_fastapi.py MODEL.pt PORT

POST /predict takes and returns one JSON tensor ({"shape": [...], "data": [...]}); POST /raw takes
raw float32 bytes (shape in X-Shape) and answers raw bytes, the cheapest a tensor can travel.
For bench/serving.py only.
"""

from __future__ import annotations

import sys

import numpy as np
import torch
import uvicorn
from fastapi import FastAPI, Request, Response

from optimizer_pipeline.measure.allocator import pin_malloc_thresholds


def build(model_path: str) -> FastAPI:
    torch.set_num_threads(1)
    pin_malloc_thresholds()
    model = torch.jit.load(model_path)
    app = FastAPI()

    @app.post("/predict")
    async def predict(request: Request) -> dict:
        body = await request.json()
        x = torch.tensor(body["data"], dtype=torch.float32).reshape(body["shape"])
        with torch.inference_mode():
            y = model(x)
        return {"shape": list(y.shape), "data": y.reshape(-1).tolist()}

    @app.post("/raw")
    async def raw(request: Request) -> Response:
        shape = [int(size) for size in request.headers["x-shape"].split(",")]
        x = torch.from_numpy(np.frombuffer(await request.body(), dtype=np.float32).reshape(shape).copy())
        with torch.inference_mode():
            y = model(x)
        return Response(y.numpy().tobytes(), media_type="application/octet-stream")

    return app


if __name__ == "__main__":
    uvicorn.run(build(sys.argv[1]), host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
