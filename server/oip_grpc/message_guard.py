"""Each gRPC request is walked before protobuf parses it, so that no message can hold the API server.

gRPC hands the servicer a parsed message, and parsing happens on the API server's event loop. Its
cost follows the number of parts, not the bytes: 20 MB of empty `inputs` entries (10 million of
them) took 2.4 s and 1 GB to parse, and the 512 MB a message may carry would have taken minutes and
more memory than the machine has (a ModelInferRequest; every request type with a repeated or
unknown field is alike). Packed numbers grow as well: a one-byte varint becomes 8 bytes of int64.
So the wire format is walked first (microseconds for a real request): past MAX_PARTS fields, or
past MAX_PACKED_BYTES of parsed numbers, the request is refused unparsed with INVALID_ARGUMENT and
what to fix.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from tritonclient.grpc import service_pb2 as pb

from wire.schemas import MAX_INPUTS

SERVICE = "inference.GRPCInferenceService"
# The RPCs served, by their request type. Only these are registered: protobuf would parse any other
# RPC's request (ModelStreamInfer's is a ModelInferRequest too) before the servicer said UNIMPLEMENTED.
REQUESTS = {
    "ServerLive": pb.ServerLiveRequest,
    "ServerReady": pb.ServerReadyRequest,
    "ServerMetadata": pb.ServerMetadataRequest,
    "ModelReady": pb.ModelReadyRequest,
    "ModelMetadata": pb.ModelMetadataRequest,
    "ModelInfer": pb.ModelInferRequest,
}

# Fields of every level together. A real request has a few per input and output (at most MAX_INPUTS
# inputs, as on REST); its tensors travel in raw_input_contents or packed contents, one field each.
MAX_PARTS = 10_000
# Packed numbers (shapes, and tensors sent as typed `contents`), as parsed. Typed contents become an
# array one value at a time on the event loop (2 million float32 values, 8 MiB, take about 0.08 s);
# tritonclient and large tensors use raw_input_contents, which is one copy.
MAX_PACKED_BYTES = 8 * 2**20
# What one byte of a packed field may become once parsed: a one-byte varint is a whole element.
_PARSED_WIDTH = {
    FieldDescriptor.TYPE_BOOL: 1,
    FieldDescriptor.TYPE_INT32: 4, FieldDescriptor.TYPE_UINT32: 4, FieldDescriptor.TYPE_SINT32: 4, FieldDescriptor.TYPE_ENUM: 4,
    FieldDescriptor.TYPE_INT64: 8, FieldDescriptor.TYPE_UINT64: 8, FieldDescriptor.TYPE_SINT64: 8,
    FieldDescriptor.TYPE_FIXED32: 1, FieldDescriptor.TYPE_SFIXED32: 1, FieldDescriptor.TYPE_FLOAT: 1,
    FieldDescriptor.TYPE_FIXED64: 1, FieldDescriptor.TYPE_SFIXED64: 1, FieldDescriptor.TYPE_DOUBLE: 1,
}


@dataclass(frozen=True)
class Refused:
    """A request that was not parsed, and why (answered INVALID_ARGUMENT)."""

    message: str


class _Stop(Exception):
    pass


def guarded_handler(servicer: Any) -> grpc.GenericRpcHandler:
    """The servicer's RPCs, each request walked before it is parsed. ModelInfer receives a Refused
    (to answer it and count it like any bad request); the others are answered INVALID_ARGUMENT here."""
    handlers = {}
    for name, request_type in REQUESTS.items():
        method = getattr(servicer, name)
        handlers[name] = grpc.unary_unary_rpc_method_handler(
            method if name == "ModelInfer" else _refusing(method),
            request_deserializer=request_reader(request_type),
            response_serializer=lambda message: message.SerializeToString(),
        )
    return grpc.method_handlers_generic_handler(SERVICE, handlers)


def request_reader(request_type: type[Message]) -> Callable[[bytes], Message | Refused]:
    """A request deserializer: the parsed message, or Refused."""
    kind = request_type.DESCRIPTOR.name

    def read(data: bytes) -> Message | Refused:
        try:
            _Walk(kind).message(memoryview(data), request_type.DESCRIPTOR)
        except _Stop as stop:
            return Refused(str(stop))
        try:
            return request_type.FromString(data)
        except Exception as exc:  # protobuf's DecodeError and friends
            return Refused(f"the request is not a valid {kind} ({exc})")

    return read


def _refusing(method: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def call(request: Message | Refused, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, Refused):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        return await method(request, context)

    return call


class _Walk:
    def __init__(self, kind: str) -> None:
        self.parts = MAX_PARTS
        self.parsed_bytes = MAX_PACKED_BYTES
        self.invalid = f"the request is not a valid {kind}"

    def message(self, data: memoryview, descriptor: Descriptor) -> None:
        position, end = 0, len(data)
        while position < end:
            key, position = _varint(data, position)
            self.parts -= 1
            if self.parts < 0:
                raise _Stop(f"the request has more than {MAX_PARTS} fields (inputs, outputs, parameters, shape entries "
                            f"and contents together); send at most {MAX_INPUTS} inputs, each tensor in raw_input_contents or packed contents")
            number, wire_type = key >> 3, key & 7
            if wire_type == 0:
                _, position = _varint(data, position)
            elif wire_type in (1, 5):
                position += 8 if wire_type == 1 else 4
            elif wire_type == 2:
                length, position = _varint(data, position)
                if position + length > end:
                    raise _Stop(f"{self.invalid} (a field runs past the end of the message)")
                self._length_delimited(data[position : position + length], _fields(descriptor).get(number))
                position += length
            else:
                raise _Stop(f"{self.invalid} (wire type {wire_type})")
        if position != end:
            raise _Stop(f"{self.invalid} (a field runs past the end of the message)")

    def _length_delimited(self, chunk: memoryview, field: Descriptor | int | None) -> None:
        if isinstance(field, int):  # packed numbers
            self.parsed_bytes -= len(chunk) * field
            if self.parsed_bytes < 0:
                raise _Stop(f"the request's typed contents and shapes would parse to more than {MAX_PACKED_BYTES // 2**20} MiB "
                            "of numbers; send large tensors in raw_input_contents")
        elif field is not None:
            self.message(chunk, field)
        # else: a string, bytes, or an unknown field, which stay raw bytes


@functools.cache
def _fields(descriptor: Descriptor) -> dict[int, Descriptor | int]:
    """Field number -> the message type of a message field, or the parsed width of a packed number field."""
    fields: dict[int, Descriptor | int] = {}
    for field in descriptor.fields:
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            fields[field.number] = field.message_type
        elif field.type in _PARSED_WIDTH:
            fields[field.number] = _PARSED_WIDTH[field.type]
    return fields


def _varint(data: memoryview, position: int) -> tuple[int, int]:
    if position < len(data) and data[position] < 0x80:  # most keys and lengths: one byte
        return data[position], position + 1
    value, shift = 0, 0
    for index in range(position, min(position + 10, len(data))):
        byte = data[index]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, index + 1
        shift += 7
    raise _Stop("the request is not valid protobuf (a truncated varint)")
