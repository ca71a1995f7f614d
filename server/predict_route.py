"""POST /predict, in front of the /predict workers.

LitServe's own route hands the workers the parsed body only; this one also carries the request's
X-Routing-Key header, so a split can keep one caller on one variant.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Header, Response

from .litserve_bridge import QueueBridge
from .schemas import PredictRequest

ROUTING_KEY_HEADER = "X-Routing-Key"


class PredictRoute:
    def __init__(self, bridge: QueueBridge) -> None:
        self.bridge = bridge

    def install(self, app: FastAPI, dependencies: list[Any] | None) -> None:
        # On the app itself, not through a router: api_docs documents the inference routes it finds there.
        app.add_api_route(self.bridge.api_path, self.predict, methods=["POST"], dependencies=dependencies)

    async def predict(
        self,
        request: PredictRequest,
        x_routing_key: str | None = Header(None, max_length=256, description="sticky split: the same key always gets the same variant"),
    ) -> Response:
        if request.routing_key is None and x_routing_key is not None:
            request.routing_key = x_routing_key
        return await self.bridge.call(request)
