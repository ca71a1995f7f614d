"""What the server and the Python client share: the Open Inference Protocol v2 wire format, the
contract (contract/) and the report read as text (report_text/).

Needs only numpy, pydantic and orjson (fast JSON number lists): the client installs and imports
without torch or the server.
"""

from .codec import (
    WireError,
    WireTensor,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
)
from .datatypes import DATATYPES, numpy_dtype
from .schemas import InferenceRequest, InferenceResponse, MetadataTensor, ModelMetadata, RequestInput, RequestOutput

__all__ = [
    "DATATYPES",
    "InferenceRequest",
    "InferenceResponse",
    "MetadataTensor",
    "ModelMetadata",
    "RequestInput",
    "RequestOutput",
    "WireError",
    "WireTensor",
    "decode_request",
    "decode_response",
    "encode_request",
    "encode_response",
    "numpy_dtype",
]
