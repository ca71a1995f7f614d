"""What inference workers write, written for them by the main process: workers hold the index read-only.

A worker runs uploaded model code, so it must not be able to rewrite another model's routing or
variants. It still produces two kinds of records: live samples (with the models whose variants it
compared, for the guard) and forward timeouts. It sends them as JSON datagrams over a Unix socket
to a thread of the main process, which parses them against the pydantic models below (never
unpickles them), writes them, and judges the guard: a rollback is decided here, from the stored
window, not by the worker.

What a compromised worker can still do through this channel: send samples and timeouts that are
well-formed but false, for any model id. At worst that rolls a model back to its original (the safe
direction) or marks it unhealthy until a reset; it cannot change routing, variants or files.
"""

from __future__ import annotations

import logging
import socket
import threading
from typing import Annotated, Literal, Union

from pydantic import BaseModel, Field, TypeAdapter, ValidationError
from wire.contract.live import LiveSample
from wire.contract.models import RoutingEvent
from wire.contract.routing import Pinned

from .window import live_status
from ..store import Store, now

logger = logging.getLogger("optiserve")

# A datagram well under the socket's buffer (about 208 KiB by default): larger batches are split.
MAX_DATAGRAM_BYTES = 64 * 1024
MAX_SAMPLES = 512
ModelId = Annotated[str, Field(min_length=1, max_length=64)]


class LiveRecord(BaseModel):
    kind: Literal["live"] = "live"
    samples: list[tuple[ModelId, LiveSample]] = Field(max_length=MAX_SAMPLES)
    compared: list[ModelId] = Field(default_factory=list, max_length=MAX_SAMPLES, description="models whose guard to judge")


class TimeoutRecord(BaseModel):
    kind: Literal["timeout"] = "timeout"
    model_id: ModelId
    reason: str = Field(max_length=2000)


Record = Annotated[Union[LiveRecord, TimeoutRecord], Field(discriminator="kind")]
_RECORD = TypeAdapter(Record)


class RecordSender:
    """A worker's end. Picklable: LitServe hands it to every worker it spawns, with the LitAPI."""

    def __init__(self, endpoint: socket.socket) -> None:
        self._endpoint = endpoint

    def live(self, samples: list[tuple[str, LiveSample]], compared: set[str]) -> None:
        self._send_live(samples, sorted(compared))

    def live_now(self, samples: list[tuple[str, LiveSample]]) -> bool:
        """Send samples (no comparisons) as one datagram if that needs no wait; False leaves them to `live`."""
        data = LiveRecord(samples=samples, compared=[]).model_dump_json().encode()
        if len(data) > MAX_DATAGRAM_BYTES:
            return False
        try:
            self._endpoint.send(data, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        return True

    def timeout(self, model_id: str, reason: str) -> None:
        # Sent by the watchdog just before the worker ends: it must not wait for a busy writer.
        data = TimeoutRecord(model_id=model_id, reason=reason[:2000]).model_dump_json().encode()
        try:
            self._endpoint.send(data, socket.MSG_DONTWAIT)
        except BlockingIOError:
            logger.error("the timeout of model %s could not be recorded: the main process's writer is behind", model_id)

    def _send_live(self, samples: list[tuple[str, LiveSample]], compared: list[str]) -> None:
        data = LiveRecord(samples=samples, compared=compared).model_dump_json().encode()
        if len(data) > MAX_DATAGRAM_BYTES and len(samples) > 1:
            half = len(samples) // 2
            self._send_live(samples[:half], [])
            self._send_live(samples[half:], compared)  # judged once every sample is in
            return
        self._send(data)

    def _send(self, data: bytes) -> None:
        self._endpoint.send(data)  # one datagram: never interleaved with another worker's


class RecordWriter:
    """The main process's end: a thread that validates records and writes them to the store."""

    def __init__(self, store: Store, unhealthy_after: int) -> None:
        self.store = store
        self.unhealthy_after = unhealthy_after
        self._receiver, endpoint = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sender = RecordSender(endpoint)

    def start(self) -> None:
        threading.Thread(target=self._run, name="record-writer", daemon=True).start()

    def _run(self) -> None:
        while True:
            data = self._receiver.recv(4 * MAX_DATAGRAM_BYTES)
            try:
                record = _RECORD.validate_json(data)
            except ValidationError as exc:
                logger.warning("refused a malformed record from an inference worker: %s", str(exc)[:300])
                continue
            try:
                self.write(record)
            except Exception:  # a bad id, the database restarting: the next record must still be written
                logger.exception("writing a worker's %s record failed", record.kind)

    def write(self, record: LiveRecord | TimeoutRecord) -> None:
        if isinstance(record, TimeoutRecord):
            self.store.record_timeout(record.model_id, record.reason, self.unhealthy_after)
            return
        known = {model_id for model_id in {model_id for model_id, _ in record.samples} if self.store.exists(model_id)}
        self.store.record_live([sample for sample in record.samples if sample[0] in known])  # deleted meanwhile: dropped
        for model_id in record.compared:
            self._judge(model_id)

    def _judge(self, model_id: str) -> None:
        info = self.store.get(model_id)
        if info is None:
            return
        status = live_status(self.store, info)
        verdict = status.guard  # summarize has judged the window already
        if verdict.state != "tripped":
            return
        event = RoutingEvent(at=now(), kind="rollback", trigger="guard", reason=verdict.reason, routing=Pinned(variant="original"), fidelity=status.fidelity)
        if self.store.roll_back(model_id, info.routing_revision, event):
            logger.warning("model %r rolled back to its original: %s", info.name, verdict.reason)
