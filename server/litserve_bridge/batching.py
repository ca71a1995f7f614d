"""How a worker collects a batch, and the note of what it holds (for the main process to answer if it dies)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from fastapi import HTTPException
from litserve.loops.base import _SENTINEL_VALUE, _StopLoopError
from litserve.loops.simple_loops import BatchedLoop
from litserve.utils import LitAPIStatus, LoopResponseType, PickleableHTTPException



# How long an idle worker blocks on its queue before LitServe's loop gets control back.
IDLE_WAKE_SECONDS = 1.0
logger = logging.getLogger("optiserve")
# The uid field of a queue item that carries a group of one model's requests, not one request.
GROUP = "optiserve-group"
# Exit code of a worker that retires on purpose after answering its batch (e.g. after a request hit
# its memory cap); the forward watchdog's is forward_watchdog.EXIT_CODE.
RETIRED_EXIT_CODE = 76

Member = tuple[str, float, Any]  # (uid, arrival time, payload) of one request in a group


# ---- what a worker holds, for the main process to answer if it dies ----


class HeldBatch(BaseModel):
    """The requests a worker holds (written before their forward call), or why it retired."""

    model: str = ""  # as the requests named it
    pid: int = 0  # the worker's
    requests: list[tuple[int, str]] = []  # (response queue id, uid)
    failure: str | None = None  # a worker that retires on purpose: what its model did (e.g. out_of_memory)
    reason: str = ""


class HeldRecord:
    """A small per-worker file. The worker rewrites it per batch (one pwrite, a few microseconds);
    the main process reads it only once the worker is dead, so the two never race."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # Opened once, before the worker's filesystem is confined.
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        self._empty = True
        self.pid = os.getpid()

    def write(self, batch: HeldBatch) -> None:
        data = batch.model_dump_json().encode()
        os.pwrite(self._fd, len(data).to_bytes(4, "little") + data, 0)
        self._empty = False

    def clear(self) -> None:
        if not self._empty:
            os.pwrite(self._fd, bytes(4), 0)
            self._empty = True

    @staticmethod
    def read(path: Path) -> HeldBatch:
        try:
            data = path.read_bytes()
            return HeldBatch.model_validate_json(data[4 : 4 + int.from_bytes(data[:4], "little")]) if data[:4] != bytes(4) else HeldBatch()
        except (OSError, ValueError):
            return HeldBatch()


def _no_op() -> None:
    pass


def held_record_path(directory: Path, api_path: str, worker_id: int) -> Path:
    return directory / f"{api_path.strip('/').replace('/', '-')}-{worker_id}.held"


class GreedyBatchLoop(BatchedLoop):
    """LitServe's batched loop, but a batch is one queue item, taken the moment it arrives.

    LitServe's own collection waits up to `batch_timeout` for company, so a lone request always
    pays that wait, and an idle worker polls its queue every millisecond. Here an idle worker blocks
    on the queue and runs what it takes at once. The API server has already merged a model's queued
    requests into one group item; taking no more than that keeps one model per batch, so nothing
    of another model ever waits behind this model's forward calls.

    It remembers the batch it holds, so that another thread (the forward watchdog) can answer it
    when the loop's own thread is stuck in a forward call, and writes it to `record` so that the main
    process can answer it when the worker dies. It does not send LitServe's per-request START
    message: that only feeds LitServe's worker monitor, which is not used (see supervise_workers).
    """

    def __init__(self) -> None:
        super().__init__()
        self._held: list[tuple[int, str, float, Any]] = []  # (response queue id, uid, arrival, payload)
        self._models: dict[int, str] = {}  # batch position -> model id, once the model is looked up
        self._transport: Any = None
        self._queue: Any = None
        self._retire: HeldBatch | None = None
        self.record: HeldRecord | None = None
        self._answers: dict[int, list] = {}  # response queue id -> answers made, not sent yet

    def get_batch_requests(self, lit_api: Any, request_queue: Any, transport: Any) -> tuple[list, list]:
        # The previous batch is answered by now: nothing is held any more.
        self._transport, self._queue, self._held, self._models = transport, request_queue, [], {}
        if self.record is not None:
            self.record.clear()
            if self._retire is not None:
                self.record.write(self._retire)
                os._exit(RETIRED_EXIT_CODE)
        item = self.get_request(request_queue, timeout=IDLE_WAKE_SECONDS)
        if item is None:
            return [], []
        if item == _SENTINEL_VALUE:
            raise _StopLoopError()
        response_queue_id, uid, arrived, payload = item
        taken = [(response_queue_id, *member) for member in payload] if uid == GROUP else [item]
        payloads, timed_out = [], []
        moment = time.monotonic()
        for response_queue_id, uid, arrived, payload in taken:
            if moment - arrived > lit_api.request_timeout:
                timed_out.append((response_queue_id, uid))
            else:
                payloads.append((response_queue_id, uid, payload))
                self._held.append((response_queue_id, uid, arrived, payload))
        if self.record is not None and self._held:
            model = str(getattr(self._held[0][3], "model", ""))
            self.record.write(HeldBatch(model=model, pid=self.record.pid, requests=[(q, u) for q, u, _, _ in self._held]))
        return payloads, timed_out

    def run_batched_loop(self, lit_api: Any, request_queue: Any, transport: Any, callback_runner: Any, lit_spec: Any = None) -> None:
        """LitServe's batched loop, for APIs whose decode_request, batch and unbatch pass payloads
        through (BridgedAPI): predict takes the batch's payloads, and the batch's answers leave
        together. LitServe's own loop looks each hook's signature up (inspect.signature) once per
        request and hook, and runs callbacks these APIs do not have."""
        while True:
            try:
                batch, timed_out = self.get_batch_requests(lit_api, request_queue, transport)
            except _StopLoopError:
                return
            for response_queue_id, uid in timed_out:
                self._answer(response_queue_id, uid, PickleableHTTPException(504, "Request timed out"), LitAPIStatus.ERROR)
            if batch:
                self._run(lit_api, batch)
            if batch:
                # Counted as waiting from before its answers leave (channels.DirectQueue): a group sent
                # on their arrival is this warm worker's, even while it finishes the work after them.
                getattr(request_queue, "coming_back", _no_op)()
            self._send_answers(transport)
            if batch:
                lit_api.answered()

    def _run(self, lit_api: Any, batch: list[tuple[int, str, Any]]) -> None:
        try:
            outputs = lit_api.predict([payload for _, _, payload in batch])
            if len(outputs) != len(batch):
                raise HTTPException(500, "inference returned a different number of answers than requests")
            answers = [lit_api.encode_response(output) for output in outputs]
        except HTTPException as error:
            answers = [PickleableHTTPException.from_exception(error)] * len(batch)
        except Exception:
            # Not the exception itself: one that cannot be pickled would leave its requests waiting.
            logger.exception("inference failed in the worker")
            answers = [PickleableHTTPException(500, "inference failed in the worker; the server log has details")] * len(batch)
        for (response_queue_id, uid, _), answer in zip(batch, answers):
            failed = isinstance(answer, HTTPException)
            self._answer(response_queue_id, uid, answer, LitAPIStatus.ERROR if failed else LitAPIStatus.OK)

    def _answer(self, response_queue_id: int, uid: str, data: Any, status: LitAPIStatus) -> None:
        self._answers.setdefault(response_queue_id, []).append((uid, (data, status, LoopResponseType.REGULAR, self.worker_id)))

    def _send_answers(self, transport: Any) -> None:
        """Every answer made, one message per API server (DirectTransport.send_many), or one by one."""
        answers, self._answers = self._answers, {}
        for response_queue_id, items in answers.items():
            if hasattr(transport, "send_many"):
                transport.send_many(items, response_queue_id)
            else:
                for item in items:
                    transport.send(item, consumer_id=response_queue_id)

    def running(self, positions: Iterable[int], model_id: str) -> None:
        """Predict says which model the requests at these batch positions are for (model code may run now)."""
        for position in positions:
            self._models[position] = model_id

    def retire_after_batch(self, failure: str, model_id: str, reason: str) -> None:
        """End this worker once its batch is answered; the main process counts `failure` against the model."""
        self._retire = HeldBatch(model=model_id, failure=failure, reason=reason)

    def release_held(self, model_id: str, error: HTTPException) -> None:
        """From any thread, as the worker is about to end: answer the held requests for `model_id` with
        `error`, and put every other held request back on the queue (with its arrival time) for
        another worker."""
        failure = PickleableHTTPException.from_exception(error)
        self._send_answers(self._transport)  # answers made already; the rest go one by one, now
        back: dict[int, list[Member]] = {}
        for position, (response_queue_id, uid, arrived, payload) in enumerate(self._held):
            if self._models.get(position) == model_id:
                self.put_response(self._transport, response_queue_id, uid, failure, LitAPIStatus.ERROR, LoopResponseType.REGULAR)
            else:
                back.setdefault(response_queue_id, []).append((uid, arrived, payload))
        for response_queue_id, members in back.items():
            self._queue.put((response_queue_id, GROUP, members[0][1], tuple(members)))
        self._held = []
        if self.record is not None:
            self.record.clear()


