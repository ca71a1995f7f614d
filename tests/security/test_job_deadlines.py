"""Jobs: a model call that never returns costs its own candidate, never the queue.

Real servers, real hostile TorchScript models: one whose pruned candidates never return, one whose
forward never returns on the calibration set. The runner has two job slots here.
"""

from __future__ import annotations

import requests

import hostile_models
import tiny_models
from server_harness import AUTH, FAST_LATENCY, FORCED_FREEZE, predict, server_fixture, upload, wait_for, wait_until

server = server_fixture({"OPTISERVE_JOB_CONCURRENCY": "2"})

PRUNES = [{"plan": [{"pass": "prune_unstructured", "amount": amount}]} for amount in (0.1, 0.2, 0.4, 0.5)]


def _report(url: str, model_id: str) -> dict:
    response = requests.get(f"{url}/models/{model_id}/report", timeout=10)
    assert response.status_code == 200, response.text
    return {candidate["name"]: candidate for candidate in response.json()["candidates"]}


def test_candidates_that_hang_fail_alone_and_the_search_goes_on(server):
    config = {
        "candidates": [{"plan": [{"pass": "freeze"}]}, {"plan": [{"pass": "quantize_dynamic"}]}, *PRUNES],
        "candidate_timeout": 5,
        **FAST_LATENCY,
    }
    accepted = upload(server.url, hostile_models.archive(hostile_models.LoopsOncePruned()), hostile_models.inputs(16), name="prunetrap", config=config)
    assert accepted.status_code == 202, accepted.text
    # Without a deadline per step the job would hold its slot for job_timeout (an hour).
    status = wait_for(server.url, accepted.json()["id"], timeout=150)
    assert status["state"] == "ready", status

    candidates = _report(server.url, "prunetrap")
    assert candidates["freeze"]["status"] == "ok", candidates["freeze"]
    assert candidates["quantize_dynamic"]["status"] == "ok", candidates["quantize_dynamic"]
    hung = [candidates[f"prune_unstructured(amount={amount})"] for amount in (0.1, 0.2, 0.4)]
    for candidate in hung:
        assert candidate["status"] == "failed", candidate
        assert "exceeded its deadline of 5 s while checking its fidelity" in candidate["error"], candidate["error"]
    # After three hung candidates the model evidently hangs once transformed: the rest are not tried.
    last = candidates["prune_unstructured(amount=0.5)"]
    assert last["status"] == "skipped" and "not tried: 3 candidates exceeded their deadline" in last["error"], last
    assert predict(server.url, "prunetrap", hostile_models.inputs(2)[0]).status_code == 200


def test_an_original_that_hangs_on_the_calibration_set_fails_its_job_at_the_deadline(server):
    # Two samples pass validation; the calibration set (16) never returns.
    archive = hostile_models.archive(hostile_models.LoopsAboveBatch(limit=2))
    accepted = upload(server.url, archive, hostile_models.inputs(16), name="batchtrap", config={"candidate_timeout": 3})
    assert accepted.status_code == 202, accepted.text
    status = wait_for(server.url, accepted.json()["id"], timeout=90)
    assert status["state"] == "failed", status
    assert "the original model exceeded its deadline of 3 s while running it over the calibration set" in status["error"], status
    assert predict(server.url, "batchtrap", hostile_models.inputs(2)[0]).status_code == 200


def test_with_two_job_slots_an_upload_finishes_while_another_job_is_stuck(server):
    stuck = upload(
        server.url,
        hostile_models.archive(hostile_models.LoopsAboveBatch(limit=2)),
        hostile_models.inputs(16),
        name="stuck",
        config={"candidate_timeout": 600},
    )
    assert stuck.status_code == 202, stuck.text
    wait_until(lambda: requests.get(f"{server.url}/models/stuck", timeout=10).json()["state"] == "optimizing", "the stuck job to start")
    archive, inputs = tiny_models.mlp()
    quick = upload(server.url, archive, inputs, name="quick", config=FORCED_FREEZE)
    assert quick.status_code == 202, quick.text
    assert wait_for(server.url, quick.json()["id"], timeout=90)["state"] == "ready"
    assert requests.get(f"{server.url}/models/stuck", timeout=10).json()["state"] == "optimizing"

    # Deleting the stuck model stops its job and frees the slot.
    assert requests.delete(f"{server.url}/models/stuck", headers=AUTH, timeout=30).status_code == 200
    wait_until(lambda: not server.grandchildren(), "the stuck job's process to end", timeout=30)
