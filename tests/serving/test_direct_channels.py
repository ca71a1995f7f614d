"""Requests and answers between the API servers and the workers over the bridge's datagram channels
(server/litserve_bridge/channels.py): what fits in a datagram goes directly, what does not takes
LitServe's Manager queue, and either way every item arrives. Real sockets, a real Manager, a real
spawned process, and a real server under concurrent large requests."""

from __future__ import annotations

import asyncio
import multiprocessing
import multiprocessing.connection
import queue
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
import torch

import tiny_models
from server.litserve_bridge.channels import MAX_DATAGRAM_BYTES, DirectQueue, DirectTransport
from server_harness import FORCED_FREEZE, server_fixture, upload, wait_for
from wire.codec import decode_response, encode_request, wire_tensor

server = server_fixture({"OPTISERVE_MAX_BATCH_SIZE": "16"})
LARGE = b"x" * (MAX_DATAGRAM_BYTES + 1)


def _take(direct: DirectQueue, count: int, results: multiprocessing.Queue) -> None:
    # In a spawned process, as an inference worker reads its queue.
    results.put(sorted(len(direct.get(timeout=30)) for _ in range(count)))


def _answer(transport: DirectTransport, consumer_id: int) -> None:
    # In a spawned process, as a worker sends a batch's answers: one group that fits, one that does not.
    transport.send_many([("small", ("ok", "OK", 0, 0))], consumer_id)
    transport.send_many([("large-1", (LARGE, "OK", 0, 0)), ("large-2", (b"y", "OK", 0, 0))], consumer_id)


def test_a_spawned_reader_gets_items_that_fit_a_datagram_and_items_that_do_not():
    context = multiprocessing.get_context("spawn")
    with multiprocessing.Manager() as manager:
        direct = DirectQueue(manager.Queue())
        results = context.Queue()
        reader = context.Process(target=_take, args=(direct, 3, results))
        reader.start()
        for item in (b"a" * 10, LARGE, b"b" * 1000):
            direct.put(item)
        assert results.get(timeout=60) == [10, 1000, len(LARGE)]
        reader.join(30)
        with pytest.raises(queue.Empty):
            direct.get(timeout=0.05)


class _Waiting:
    """What the API server's response buffer holds for one request (LitServe's ResponseBufferItem)."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.response = None


def test_answers_from_a_spawned_worker_reach_the_buffer_directly_or_through_the_manager():
    async def receive(transport: DirectTransport, buffer: dict) -> dict:
        # As LitServe's reader task in the API server: the first areceive starts the datagram reader;
        # the Manager queue's items come back from areceive itself, as LitServe reads them.
        from_manager = {}
        while len(from_manager) < 2 or not buffer["small"].event.is_set():
            item = await transport.areceive(0, timeout=30)
            if item is not None:
                from_manager[item[0]] = item[1][0]
        return from_manager

    with multiprocessing.Manager() as manager:
        buffer = {uid: _Waiting() for uid in ("small", "large-1", "large-2")}
        transport = DirectTransport(manager, [manager.Queue()], channels=1, buffer=buffer)
        worker = multiprocessing.get_context("spawn").Process(target=_answer, args=(transport, 0))
        worker.start()
        from_manager = asyncio.run(asyncio.wait_for(receive(transport, buffer), 60))
        worker.join(30)
    assert buffer["small"].response == ["ok", "OK"]  # through the datagram, straight into the buffer
    assert from_manager == {"large-1": LARGE, "large-2": b"y"}  # a group too large goes whole through the Manager


EMBEDDER_ARCHIVE, EMBEDDER_INPUTS = tiny_models.embedder()


@pytest.fixture(scope="module")
def embedder(server):
    accepted = upload(server.url, EMBEDDER_ARCHIVE, EMBEDDER_INPUTS, name="embedder", config=FORCED_FREEZE)
    assert accepted.status_code == 202, accepted.text
    assert wait_for(server.url, accepted.json()["id"])["state"] == "ready"
    return requests.get(f"{server.url}/v2/models/embedder", timeout=10).json()["inputs"][0]["name"]


def test_concurrent_requests_and_answers_larger_together_than_a_datagram_are_all_answered(server, embedder):
    # Each of these stays below shared memory's threshold and travels inline: 4000 x 16 floats in
    # (256 KB), or 2000 x 32 out (256 KB). Grouped, they pass a datagram's size on the way in or out.
    def call(rows: int, seed: int) -> None:
        x = torch.randn(rows, 16, generator=torch.Generator().manual_seed(seed))
        body, headers = encode_request([wire_tensor(embedder, x.numpy())])
        response = requests.post(f"{server.url}/v2/models/embedder/infer", data=body, headers=headers, timeout=120)
        assert response.status_code == 200, response.text[:300]
        _, (output,) = decode_response(response.content, response.headers.get("Inference-Header-Content-Length"))
        np.testing.assert_allclose(output.array, tiny_models.local_forward(EMBEDDER_ARCHIVE, x).numpy(), rtol=1e-4, atol=1e-5)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(call, [2000, 4000, 100] * 16, range(48)))


def _serve_as(worker_id: int, direct: DirectQueue, answers) -> None:
    # In a spawned process, as inference worker `worker_id` runs its loop: take a group, say it is
    # coming back (GreedyBatchLoop does, before the answers leave), answer. Each reader answers on a
    # pipe of its own: killing one holds no lock the other needs.
    import os

    os.environ["LITSERVE_WORKER_ID"] = str(worker_id)
    answers.send(-1)  # started
    while True:
        try:
            item = direct.get(timeout=30)
        except queue.Empty:
            return
        if item == b"stop":
            return
        direct.coming_back()
        answers.send(worker_id)
        time.sleep(0.0002)  # the work after the answers (live statistics), shorter than the hand-off


class _Readers:
    """Spawned readers of `direct` as workers 0, 1, ...; `next_taker()` says which took the last group."""

    def __init__(self, direct: DirectQueue, count: int) -> None:
        context = multiprocessing.get_context("spawn")
        pipes = [context.Pipe(duplex=False) for _ in range(count)]
        self.ends = [receiving for receiving, _ in pipes]
        self.processes = [context.Process(target=_serve_as, args=(i, direct, sending)) for i, (_, sending) in enumerate(pipes)]
        for process in self.processes:
            process.start()
        assert all(end.poll(120) and end.recv() == -1 for end in self.ends), "a reader did not start"

    def next_taker(self) -> int:
        ready = multiprocessing.connection.wait(self.ends, timeout=60)
        assert len(ready) == 1, f"{len(ready)} readers answered one group"
        return ready[0].recv()


def test_one_models_steady_traffic_stays_on_the_lowest_numbered_waiting_worker():
    # One group at a time, the next sent when the last is answered, as a model's lane sends them.
    # Both readers wake on every datagram; without the preference the one that did not just answer
    # reads first and the groups alternate.
    with multiprocessing.Manager() as manager:
        direct = DirectQueue(manager.Queue())
        readers = _Readers(direct, 2)
        counts = {0: 0, 1: 0}
        for _ in range(100):
            direct.put(b"group")
            counts[readers.next_taker()] += 1
        for process in readers.processes:
            direct.put(b"stop")
        for process in readers.processes:
            process.join(30)
    assert counts[0] >= 90, counts


def test_a_group_left_to_a_dead_workers_slot_is_still_taken_by_another():
    # Worker 0 dies while it waits: its slot still says so (nothing ran its `finally`), and worker 1
    # leaves each group to it for a moment, then takes it. Supervision forgets the slot.
    with multiprocessing.Manager() as manager:
        direct = DirectQueue(manager.Queue())
        readers = _Readers(direct, 2)
        first, second = readers.processes
        first.kill()
        first.join(30)
        readers.ends.pop(0).close()
        for _ in range(5):
            direct.put(b"group")
            assert readers.next_taker() == 1
        direct.forget_worker(0)
        direct.put(b"group")
        assert readers.next_taker() == 1
        direct.put(b"stop")
        second.join(30)


def test_sequential_requests_run_on_one_worker_of_two(server, embedder):
    # The server's two /predict workers (the default): one model's requests one after another all
    # find worker 0 waiting, and /metrics counts the forward calls per worker pid.
    x = torch.randn(1, 16)
    body, headers = encode_request([wire_tensor(embedder, x.numpy())])
    before = _forwards_per_worker(server.url)
    for _ in range(60):
        response = requests.post(f"{server.url}/v2/models/embedder/infer", data=body, headers=headers, timeout=60)
        assert response.status_code == 200, response.text[:300]
    after = _forwards_per_worker(server.url)
    grown = sorted((after[pid] - before.get(pid, 0) for pid in after), reverse=True)
    assert sum(grown) == 60, (before, after)
    assert grown[0] >= 54, grown


def _forwards_per_worker(url: str) -> dict[str, float]:
    counts = {}
    for line in requests.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith('optiserve_worker_forwards_total{api="/predict"'):
            sample, _, value = line.rpartition(" ")
            counts[sample.split('pid="')[1].split('"')[0]] = float(value)
    return counts
