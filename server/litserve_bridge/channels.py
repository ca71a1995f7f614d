"""Requests and answers between the API servers and the inference workers without the hop through LitServe's queue Manager.

LitServe's queues live in a Manager process: every request group travels API server -> Manager ->
worker, and every answer worker -> Manager -> API server, each a round trip to the Manager (the
API server's put blocks its event loop for it) plus, for answers, a thread hop in the API server
(MPQueueTransport.areceive runs `queue.get` in a thread). Profiled on the mid ResNet at
concurrency 8 (one worker, two cores), that was about a third of the API server's CPU and all of
the Manager's.

`DirectQueue` stands in for an API's request queue: one Unix datagram socket pair, made in the
main process before anything forks or spawns, which every API server writes and every worker of
the API reads (the kernel hands each datagram to one reader). A group that does not fit goes
through the Manager queue, and a flag in shared memory (plus an empty datagram to wake a reader)
says so.

The lowest-numbered waiting worker takes the next group. Every waiting worker wakes on a datagram,
and the kernel would hand it to whichever reads first: under one model's steady traffic that is the
worker that did not just answer, so groups alternated between workers. A worker that has just
answered has its variants loaded and its caches and thread pool warm: alternating cost about 0.5 ms
of worker CPU per request on the mid ResNet at concurrency 8, on two workers and two cores (gRPC
about 500 -> 640 requests/s with the preference). So a worker that wakes while a lower-numbered
worker also waits (or has answered and is on its way back to wait) leaves the datagram to it for
up to HANDOFF_SECONDS, and then takes it if it is still there (the other may be slow to be
scheduled, or gone).

`DirectTransport` keeps LitServe's transport (the Manager queues stay, and answer whatever does
not fit) and adds, per response queue id, a Unix datagram socket pair made in the main process
before anything forks or spawns: workers (and the main process, for a dead worker's requests)
send on one end; the API server reading that id has the other end on its event loop
(`loop.add_reader`), so an answer wakes it with no thread and no third process. A worker sends one
datagram per batch and API server (GreedyBatchLoop), not one message per request.

Datagrams are written whole or not at all, so a worker killed mid-send corrupts nothing and holds
no lock, unlike a pipe shared by several writers. A send never blocks: a datagram too large for
the socket, or one that finds the reader's queue full (a dead API server's, say), goes through
the Manager queue instead, where LitServe's own reader in the API server still listens.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import pickle
import queue
import select
import socket
import time
from typing import Any

from litserve.transport.process_transport import MPQueueTransport
from litserve.utils import LitAPIStatus

logger = logging.getLogger("optiserve")
# Above this an answer group goes through the Manager queue: the receiving buffer is this large.
MAX_DATAGRAM_BYTES = 1 << 20

# How long a waking worker leaves a group to a lower-numbered waiting worker (see the docstring), and
# how often it looks whether that one has read it.
HANDOFF_SECONDS = 0.002
HANDOFF_STEP_SECONDS = 0.0002
# Worker slots a request queue tracks (OPTISERVE_WORKERS is at most 64).
WORKER_SLOTS = 64

# One message on the response path: (uid, (data, status, response type, worker id)), as LitServe sends it.
Item = tuple[str, tuple[Any, ...]]


def _pair() -> tuple[socket.socket, socket.socket]:
    receiving, sending = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    # A unix datagram may be as large as the sender's buffer; the kernel caps this at wmem_max
    # (larger answers take the Manager queue).
    sending.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 2 * MAX_DATAGRAM_BYTES)
    receiving.setblocking(False)
    sending.setblocking(False)
    return receiving, sending


def _send_whole(sending: socket.socket, item: Any) -> bool:
    """Send `item` as one datagram; False when it does not fit (too large, or the reader's queue is
    full, or the kernel's buffers are smaller): the caller then takes the Manager queue."""
    data = pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL)
    if len(data) > MAX_DATAGRAM_BYTES:
        return False
    try:
        sending.send(data)
    except OSError:
        return False
    return True


class DirectTransport(MPQueueTransport):
    """LitServe's Manager-queue transport plus a datagram channel per response queue id (see the module's docstring)."""

    def __init__(self, manager: Any, queues: list, channels: int, buffer: dict | None = None) -> None:
        super().__init__(manager, queues)
        pairs = [_pair() for _ in range(channels)]
        self._receiving: list[socket.socket | None] = [receiving for receiving, _ in pairs]
        self._sending: list[socket.socket] = [sending for _, sending in pairs]
        self._buffer = buffer  # the API server's response buffer (LitServer.response_buffer), inherited by fork
        self._reading: int | None = None

    def __reduce__(self) -> tuple:
        # What a spawned worker gets: the Manager queues and the sending ends (multiprocessing passes
        # their descriptors); no receiving end, no response buffer.
        return (_rebuild, (self._queues, self._sending))

    def send(self, item: Any, consumer_id: int) -> None:
        self.send_many([item], consumer_id)

    def send_many(self, items: list[Item], consumer_id: int) -> None:
        """Send `items` to the API server reading `consumer_id`: one datagram if it fits, else through the Manager queue."""
        if consumer_id < len(self._sending) and _send_whole(self._sending[consumer_id], items):
            return
        for item in items:
            super().send(item, consumer_id)

    async def areceive(self, consumer_id: int, timeout: float | None = None, block: bool = True) -> Any:
        # LitServe's reader task in the API server calls this in a loop: the first call puts the
        # datagram end on the event loop; the call itself keeps reading the Manager queue.
        if self._reading is None and self._buffer is not None and consumer_id < len(self._receiving):
            self._start_reading(consumer_id)
        return await super().areceive(consumer_id, timeout=timeout, block=block)

    def _start_reading(self, consumer_id: int) -> None:
        self._reading = consumer_id
        receiving = self._receiving[consumer_id]
        scratch = bytearray(MAX_DATAGRAM_BYTES)
        view = memoryview(scratch)

        def readable() -> None:
            while True:
                try:
                    size = receiving.recv_into(scratch)
                except BlockingIOError:
                    return
                try:
                    deliver(self._buffer, pickle.loads(view[:size]))
                except Exception:  # one bad datagram must not stop the reader
                    logger.exception("an answer from an inference worker could not be read")

        asyncio.get_running_loop().add_reader(receiving.fileno(), readable)


def _rebuild(queues: list, sending: list[socket.socket]) -> DirectTransport:
    transport = DirectTransport.__new__(DirectTransport)
    MPQueueTransport.__init__(transport, None, queues)
    transport._receiving, transport._sending, transport._buffer, transport._reading = [], sending, None, None
    return transport


class DirectQueue:
    """An API's request queue (see the module's docstring): `put` from any process, `get` in its workers."""

    def __init__(self, fallback: Any) -> None:
        self.fallback = fallback  # LitServe's Manager queue, for what does not fit in a datagram
        self._receiving, self._sending = _pair()
        self._waiting = multiprocessing.RawValue("b", 0)  # 1: the Manager queue may hold items
        self._idle = multiprocessing.RawArray("b", WORKER_SLOTS)  # 1 at a worker's slot while it waits in get()
        self._taken = multiprocessing.RawValue("L", 0)  # datagrams read, by any worker
        self._scratch: bytearray | None = None
        self._slot: int | None = None

    def __reduce__(self) -> tuple:
        return (_rebuild_queue, (self.fallback, self._receiving, self._sending, self._waiting, self._idle, self._taken))

    def coming_back(self) -> None:
        """This worker is about to send its batch's answers and then wait in get(): lower-numbered
        waiting includes it from now, so a group sent on its answers' arrival is left to it."""
        if self._slot is not None:
            self._idle[self._slot] = 1

    def forget_worker(self, worker_id: int) -> None:
        """A dead worker no longer waits: the others stop leaving groups to its slot."""
        self._idle[worker_id % WORKER_SLOTS] = 0

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        if _send_whole(self._sending, item):
            return
        self.fallback.put(item)
        self._waiting.value = 1  # after the put: a reader that sees the flag finds the item
        try:
            self._sending.send(b"")  # wakes a reader; if even this does not fit, readers are busy with the rest anyway
        except OSError:
            pass

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """The next item; queue.Empty after `timeout` seconds (as queue.Queue.get)."""
        if self._scratch is None:
            self._scratch = bytearray(MAX_DATAGRAM_BYTES)
            self._slot = current_worker_id() % WORKER_SLOTS
        self._idle[self._slot] = 1
        try:
            return self._get(block, timeout)
        finally:
            self._idle[self._slot] = 0

    def _get(self, block: bool, timeout: float | None) -> Any:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._waiting.value:
                self._waiting.value = 0  # before the get: a put after this sets it again
                try:
                    item = self.fallback.get_nowait()
                except queue.Empty:
                    pass
                else:
                    self._waiting.value = 1  # there may be more
                    return item
            if any(self._idle[: self._slot]):
                self._leave_to_lower_slots()
            try:
                size = self._receiving.recv_into(self._scratch)
            except BlockingIOError:  # nothing there, or another worker took it
                left = None if deadline is None else deadline - time.monotonic()
                if not block or (left is not None and left <= 0):
                    raise queue.Empty from None
                select.select([self._receiving], [], [], left)
                continue
            self._taken.value += 1  # not atomic: readers only look whether it changed
            if size:  # an empty datagram only says: look at the Manager queue
                return pickle.loads(memoryview(self._scratch)[:size])

    def get_nowait(self) -> Any:
        return self.get(block=False)

    def _leave_to_lower_slots(self) -> None:
        """While a lower-numbered worker waits and a datagram is unread, give that worker the chance
        to read it: up to HANDOFF_SECONDS per datagram, looking every HANDOFF_STEP_SECONDS."""
        seen, until = self._taken.value, time.monotonic() + HANDOFF_SECONDS
        while any(self._idle[: self._slot]) and select.select([self._receiving], [], [], 0)[0]:
            if self._taken.value != seen:  # what is unread now is a later datagram: its own time
                seen, until = self._taken.value, time.monotonic() + HANDOFF_SECONDS
            elif time.monotonic() >= until:
                return
            time.sleep(HANDOFF_STEP_SECONDS)


def current_worker_id() -> int:
    """The LitServe worker id of this inference worker (LitServe sets it before setup)."""
    return int(os.environ.get("LITSERVE_WORKER_ID", "0"))


def _rebuild_queue(fallback: Any, receiving: socket.socket, sending: socket.socket, waiting: Any, idle: Any, taken: Any) -> DirectQueue:
    direct = DirectQueue.__new__(DirectQueue)
    direct.fallback, direct._receiving, direct._sending, direct._waiting = fallback, receiving, sending, waiting
    direct._idle, direct._taken = idle, taken
    direct._scratch, direct._slot = None, None
    return direct


def deliver(buffer: dict, items: list[Item]) -> None:
    """Hand answers to the requests waiting for them, as LitServe's reader (response_queue_to_buffer) does."""
    for uid, (*response, _response_type, _worker_id) in items:
        waiting = buffer.get(uid)
        if waiting is None or response[1] == LitAPIStatus.START:
            continue  # given up on (a deadline), or LitServe's start notice
        waiting.response = response
        waiting.event.set()


def use_direct_transport(server: Any) -> None:
    """Before run(): LitServer's transport becomes a DirectTransport, and its request queues DirectQueues, once its Manager exists.

    Channels for twice the API servers: supervision's spare response queues (supervision.py) get theirs too."""
    init_manager = server._init_manager

    def init(num_api_servers: int) -> Any:
        manager = init_manager(num_api_servers)
        transport = server._transport
        if isinstance(transport, MPQueueTransport):
            server._transport = DirectTransport(manager, transport._queues, 2 * num_api_servers, server.response_buffer)
        queues = server.litapi_request_queues
        for api_path in queues:
            queues[api_path] = DirectQueue(queues[api_path])
        return manager

    server._init_manager = init
