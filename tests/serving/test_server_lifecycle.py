"""Crashes and restarts lose nothing: kill -9 of everything or of the main process during an
optimization, graceful restarts, and no process left behind."""

from __future__ import annotations

import pytest
import requests

import tiny_models
from server_harness import AUTH, FORCED_FREEZE, ServerProcess, metric_value, predict, running, upload, wait_for

# Thousands of timing rounds: the job is still optimizing when the test stops the server.
SLOW = {"latency": {"rounds": 5000, "warmup": 1}}


def served(url: str, model: str, x) -> tuple[str, list]:
    answer = predict(url, model, x)
    assert answer.status_code == 200, answer.text
    return answer.json()["variant"], answer.json()["outputs"]


def status_of(url: str, model: str) -> dict:
    return requests.get(f"{url}/models/{model}").json()


def test_kill_9_during_optimization_then_restarts_lose_nothing(tmp_path):
    store = tmp_path / "store"
    mlp, mlp_inputs = tiny_models.mlp()
    cnn, cnn_inputs = tiny_models.cnn_bn()
    x, image = mlp_inputs[0][:2], cnn_inputs[0][:2]

    with running(store) as first:
        kept = upload(first.url, mlp, mlp_inputs, name="kept", config=FORCED_FREEZE).json()["id"]
        wait_for(first.url, kept)
        kept_answer = served(first.url, "kept", x)
        assert kept_answer[0] == "optimized"
        slow = upload(first.url, cnn, cnn_inputs, name="slow", config=SLOW).json()["id"]
        wait_for(first.url, slow, states=("optimizing",))
        first.kill()

    with running(store) as second:
        # Acknowledged uploads are all there; the interrupted job was re-queued, not lost.
        status = status_of(second.url, "slow")
        assert status["state"] in ("queued", "optimizing") and "re-queued" in status["notes"][-1]
        assert served(second.url, "slow", image)[0] == "original"
        assert served(second.url, "kept", x) == kept_answer
        wait_for(second.url, slow, states=("optimizing",))
        assert status_of(second.url, "slow")["attempts"] == 2
        second.kill()

    with running(store) as third:
        status = status_of(third.url, "slow")
        assert status["state"] == "failed" and "stopped during optimization 2 time(s)" in status["error"]
        assert served(third.url, "slow", image)[0] == "original"
        graceful = upload(third.url, cnn, cnn_inputs, name="graceful", config=SLOW).json()["id"]
        wait_for(third.url, graceful, states=("optimizing",))
        # Only the main process dies: every child notices (PR_SET_PDEATHSIG) and stops; the job
        # runner hands its job back on the way out.
        leftovers = third.kill_main()
        assert not leftovers, f"processes left after kill -9 of the main process: {leftovers}"

    with running(store) as fourth:
        names = {m["name"]: m["id"] for m in requests.get(fourth.url + "/models").json()["models"]}
        assert names == {"kept": kept, "slow": slow, "graceful": graceful}
        assert served(fourth.url, "kept", x) == kept_answer
        status = status_of(fourth.url, "graceful")
        # A stop the job did not cause hands it back without spending one of its attempts.
        assert status["state"] in ("queued", "optimizing") and status["attempts"] <= 1
        assert "interrupted by a server shutdown" in status["notes"][-1]
        with pytest.raises(RuntimeError, match="another optiserve server is using the store"):
            ServerProcess(store).start()
        assert requests.delete(f"{fourth.url}/models/graceful", headers=AUTH).status_code == 200
        metrics = requests.get(fourth.url + "/metrics").text
        assert metric_value(metrics, "optiserve_jobs", state="failed") == 1
        assert metric_value(metrics, "optiserve_jobs", state="ready") == 1
        leftovers = fourth.stop()
        assert not leftovers, f"processes left after SIGTERM: {leftovers}"
