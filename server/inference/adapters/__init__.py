"""Protocol adapters in front of the inference workers: each decodes its requests, encodes its answers and shapes its errors.

- `predict`: POST /predict (PredictRequest) and POST /compare (CompareRequest), our JSON protocol.
- `oip`: the Open Inference Protocol v2, over REST (http/oip_routes.py) and gRPC (oip_grpc/).

The workers (worker.py) know no protocol: they look the model up, load, forward and observe, and
hand each request's outputs, or an ApiError, to the request's adapter (outcomes.Adapter).

Where the tensors are decoded differs, on purpose. An OIP body is decoded in the API server: its
binary tensors become zero-copy numpy views there (large ones cross to the worker in shared
memory), so the worker gets arrays and the API server only splits bytes. A /predict body's tensors
are nested lists or base64 whose dtype is the model's (a nested list takes the input dtype recorded
at upload), which only the worker knows without a store lookup per request; the API server parses
the JSON (small bodies) and the worker makes the tensors. Moving either would cost the serving
path a lookup or a copy it does not pay today.
"""

from .oip import OIP, InferCall, RawInfer
from .predict import COMPARE, PREDICT

__all__ = ["COMPARE", "OIP", "PREDICT", "InferCall", "RawInfer"]
