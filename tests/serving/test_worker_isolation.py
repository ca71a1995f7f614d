"""Inference workers under misbehaving models (issue 20, items 3-5): a memory cap, isolation between
models, and a worker's death answered at once. Real servers, real TorchScript models, real kill -9."""

from __future__ import annotations

import os
import signal
import threading

import pytest
import requests
import torch

import hostile_models
import tiny_models
from server.litserve_bridge import HeldRecord
from server_harness import AUTH, FORCED_FREEZE, predict, server_fixture, upload, wait_for, wait_until

MLP_ARCHIVE, MLP_INPUTS = tiny_models.mlp()
SAMPLE = MLP_INPUTS[0][:2]

# The defaults under test: two /predict workers and the default memory cap.
server = server_fixture({"OPTISERVE_UNHEALTHY_AFTER": "2", "OPTISERVE_FORWARD_TIMEOUT": "20", "OPTISERVE_REQUEST_TIMEOUT": "60"})


def ready_model(url: str, archive: bytes, name: str) -> None:
    accepted = upload(url, archive, hostile_models.inputs(), name=name, config=FORCED_FREEZE)
    assert accepted.status_code == 202, accepted.text
    assert wait_for(url, accepted.json()["id"])["state"] == "ready"


def marked(value: float) -> object:
    sample = hostile_models.inputs(1)[0].clone()
    sample[0, 0] = value
    return sample


def health(url: str, model: str) -> dict:
    return requests.get(f"{url}/models/{model}", timeout=10).json()["health"]


# ---- item 3: a memory cap ----


def test_a_request_past_the_default_memory_cap_gets_507_and_the_model_keeps_serving(server):
    url = server.url
    ready_model(url, MLP_ARCHIVE, "neighbour")
    ready_model(url, hostile_models.archive(hostile_models.AllocatesOnMarker()), "balloon")
    assert predict(url, "balloon", hostile_models.inputs(2)[0]).status_code == 200

    refused = predict(url, "balloon", marked(777.0))
    assert refused.status_code == 507, refused.text
    error = refused.json()["error"]
    assert error["code"] == "out_of_memory" and "OPTISERVE_WORKER_MEMORY_BYTES" in error["message"], error

    # The worker that hit the cap is replaced; the model and its neighbours keep serving meanwhile.
    for _ in range(5):
        assert predict(url, "balloon", hostile_models.inputs(2)[0]).status_code == 200
        assert predict(url, "neighbour", SAMPLE).status_code == 200
    counted = wait_until(lambda: (h := health(url, "balloon"))["out_of_memory"] == 1 and h, "the cap hit counted", timeout=20)
    assert counted["healthy"] is True and counted["crashes"] == 0
    assert "balloon" in server.log_path.read_text() and "out_of_memory" in server.log_path.read_text()


def test_a_request_larger_than_the_calibration_batch_that_hits_the_cap_is_not_the_models_fault_and_its_size_is_refused(server):
    # One anonymous request this size used to count against the model: unhealthy_after of them took it
    # out of service for everyone. Now the worker that failed refuses the size for the model instead.
    url = server.url
    ready_model(url, hostile_models.archive(hostile_models.AllocatesOnMarker()), "big-balloon")
    calibration = hostile_models.inputs()[0]  # what ready_model uploaded: 8 samples
    twice = torch.cat([calibration, calibration])
    poisoned = twice.clone()
    poisoned[0, 0] = 777.0

    failed = predict(url, "big-balloon", poisoned)
    assert failed.status_code == 507, failed.text
    message = failed.json()["error"]["message"]
    assert "larger than the calibration batch" in message and "does not count against the model's health" in message, message

    refused = predict(url, "big-balloon", twice)  # the same size unpoisoned: refused at once, not run
    assert refused.status_code == 413, refused.text
    error = refused.json()["error"]
    assert error["code"] == "request_too_large" and "went over the memory cap" in error["message"] and "/reset" in error["message"], error
    assert predict(url, "big-balloon", calibration).status_code == 200
    status = health(url, "big-balloon")
    assert status["healthy"] is True and status["out_of_memory"] == 0, status

    reset = requests.post(f"{url}/models/big-balloon/reset", headers=AUTH, timeout=10)
    assert reset.status_code == 200, reset.text
    assert predict(url, "big-balloon", twice).status_code == 200


# ---- item 5: a worker's death is answered at once ----


def busy_worker(server) -> int | None:
    """The pid of the /predict worker that holds a request right now, from the note each worker keeps
    of what it holds (the main process reads the same note when a worker dies)."""
    for path in (server.store / "workers").glob("predict-*.held"):
        held = HeldRecord.read(path)
        if held.requests:
            return held.pid
    return None


def test_kill_9_of_a_worker_answers_its_request_503_at_once_and_counts_against_the_model(server):
    url = server.url
    ready_model(url, hostile_models.archive(hostile_models.LoopsOnMarker()), "crasher")
    ready_model(url, MLP_ARCHIVE, "bystander")
    for crash in (1, 2):
        wait_until(lambda: requests.get(f"{url}/ready", timeout=10).status_code == 200, "every worker up", timeout=60)
        answers = []
        caller = threading.Thread(target=lambda: answers.append(predict(url, "crasher", marked(12345.0), variant="original")))
        caller.start()
        victim = wait_until(lambda: busy_worker(server), "a worker spinning in the looping forward", timeout=20)
        os.kill(victim, signal.SIGKILL)
        caller.join(timeout=10)  # not the 60 s request timeout, nor the 20 s forward timeout's 504
        assert answers, "the request of the killed worker was not answered within 10 s"
        assert answers[0].status_code == 503, answers[0].text
        error = answers[0].json()["error"]
        assert error["code"] == "worker_died" and "crasher" in error["message"], error
        assert health(url, "crasher")["crashes"] == crash
        assert predict(url, "bystander", SAMPLE).status_code == 200
    log = server.log_path.read_text()
    assert "died (killed by SIGKILL) running model 'crasher'" in log, log[-3000:]
    # Two crashes reach OPTISERVE_UNHEALTHY_AFTER: the input that crashes workers cannot do it again.
    status = health(url, "crasher")
    assert status["healthy"] is False and "crashed their worker" in status["reason"], status
    refused = predict(url, "crasher", marked(12345.0))
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "model_unhealthy", refused.text
    assert predict(url, "bystander", SAMPLE).status_code == 200


# ---- item 4: one model does not delay another ----


def test_a_hung_forward_of_one_model_does_not_fail_or_stall_another_models_requests(server):
    url = server.url
    ready_model(url, hostile_models.archive(hostile_models.LoopsOnMarker()), "hangs")
    ready_model(url, MLP_ARCHIVE, "innocent")
    answers = []
    caller = threading.Thread(target=lambda: answers.append(predict(url, "hangs", marked(12345.0), variant="original")))
    caller.start()
    wait_until(lambda: busy_worker(server), "a worker spinning in the hung forward", timeout=20)
    # While the forward hangs (until the 20 s watchdog), the other model's requests are answered.
    for _ in range(5):
        innocent = requests.post(f"{url}/predict", json=_body("innocent"), timeout=15)
        assert innocent.status_code == 200, innocent.text
    assert not answers, "the other model was served only once the hung forward had been stopped"
    caller.join(timeout=40)
    assert answers and answers[0].status_code == 504, answers and answers[0].text
    assert answers[0].json()["error"]["code"] == "model_timeout"
    assert predict(url, "innocent", SAMPLE).status_code == 200


def _body(model: str) -> dict:
    return {"model": model, "inputs": [{"shape": list(SAMPLE.shape), "datatype": "FP32", "data": SAMPLE.reshape(-1).tolist()}]}


def test_a_slow_model_with_more_clients_than_workers_never_queues_another_models_requests(server):
    """Three clients keep a model whose forward takes about a second busy. Were its groups allowed
    into both workers, every request of the other model would wait behind one of those forwards,
    and one slow request would be answered long before ten of the other's. It is the other way round."""
    url = server.url
    ready_model(url, hostile_models.archive(hostile_models.SlowOnMarker(rounds=150_000)), "slow")
    ready_model(url, MLP_ARCHIVE, "quick")
    stop = threading.Event()
    served = []

    def ask_slow() -> None:
        served.append(predict(url, "slow", marked(4242.0), variant="original").status_code)

    def hammer() -> None:
        while not stop.is_set():
            ask_slow()

    hammers = [threading.Thread(target=hammer) for _ in range(3)]
    for thread in hammers:
        thread.start()
    try:
        wait_until(lambda: len(served) >= 3, "the slow model serving its hammering clients", timeout=120)
        watched = threading.Thread(target=ask_slow)
        watched.start()
        with requests.Session() as session:
            for _ in range(10):
                quick = session.post(f"{url}/predict", json=_body("quick"), timeout=60)
                assert quick.status_code == 200, quick.text
        assert watched.is_alive(), "a slow request was answered before ten requests of the other model were"
        watched.join(timeout=60)
    finally:
        stop.set()
        for thread in hammers:
            thread.join(timeout=60)
    assert set(served) == {200}
