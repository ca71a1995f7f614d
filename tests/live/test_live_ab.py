"""Live A/B against a real server: routing policies, shadow traffic, the guard's rollback, drift, events.

Two variants of one tiny MLP: a faithful one (freeze: exact) and an unfaithful one (95% of its
weights pruned, served anyway with `force`). The same traffic goes to both.
"""

from __future__ import annotations

import math

import pytest
import requests
import torch

import tiny_models
from server_harness import AUTH, FAST_LATENCY, FORCED_FREEZE, metric_value, predict, running, server_fixture, upload, wait_for, wait_until

server = server_fixture()

UNFAITHFUL = {"plan": [{"pass": "prune_unstructured", "amount": 0.95}], "force": True, **FAST_LATENCY}
# Nothing qualifies: a plan whose only candidate misses an exact tolerance, without force.
NOTHING_WINS = {"plan": [{"pass": "prune_unstructured", "amount": 0.9}], "tolerance": {"metric": "cosine", "threshold": 0.99999}, **FAST_LATENCY}


@pytest.fixture(scope="module")
def mlp():
    return tiny_models.mlp()


@pytest.fixture(scope="module")
def models(server, mlp):
    archive, inputs = mlp
    ids = {}
    for name, config in (("faithful", FORCED_FREEZE), ("unfaithful", UNFAITHFUL), ("unoptimized", NOTHING_WINS)):
        accepted = upload(server.url, archive, inputs, name=name, config=config)
        assert accepted.status_code == 202, accepted.text
        ids[name] = accepted.json()["id"]
    for name, model_id in ids.items():
        assert wait_for(server.url, model_id)["state"] == "ready"
    return ids


def put(url: str, path: str, body: dict) -> requests.Response:
    return requests.put(url + path, json=body, headers=AUTH, timeout=30)


def status(url: str, model: str) -> dict:
    return requests.get(f"{url}/models/{model}", timeout=30).json()


def served_variant(response: requests.Response) -> str:
    assert response.status_code == 200, response.text
    return response.headers["x-optiserve-variant"]


def send(url: str, model: str, inputs: torch.Tensor, count: int, batch: int = 4, **fields) -> list[str]:
    return [served_variant(predict(url, model, inputs[(i * batch) % 60 :][:batch], **fields)) for i in range(count)]


def test_an_unfaithful_variant_under_shadow_traffic_is_rolled_back_within_the_window(server, models, mlp):
    url, window = server.url, 100
    assert put(url, "/models/unfaithful/guard", {"min_agreement": 0.99, "window": window}).status_code == 200
    routed = put(url, "/models/unfaithful/routing", {"mode": "shadow", "serve": "optimized", "sample": 1.0})
    assert routed.status_code == 200, routed.text
    assert routed.json()["routing"]["mode"] == "shadow"

    send(url, "unfaithful", mlp[1][0], window)
    events = wait_until(
        lambda: [e for e in requests.get(f"{url}/models/unfaithful/events", timeout=30).json()["events"] if e["kind"] == "rollback"],
        "the guard's rollback",
    )
    (rollback,) = events
    assert rollback["trigger"] == "guard"
    assert "agreement" in rollback["reason"] and "below 0.99" in rollback["reason"]
    assert rollback["fidelity"]["compared"] <= window
    assert rollback["fidelity"]["agreement"] < 0.99
    after = status(url, "unfaithful")
    assert after["routing"] == {"mode": "pinned", "variant": "original", "version": 1}
    assert set(send(url, "unfaithful", mlp[1][0], 5)) == {"original"}
    # An explicit variant still wins over the rollback.
    assert served_variant(predict(url, "unfaithful", mlp[1][0][:2], variant="optimized")) == "optimized"
    metrics = requests.get(f"{url}/metrics", timeout=30).text
    assert metric_value(metrics, "optiserve_routing_events_total", model="unfaithful", kind="rollback", trigger="guard") == 1
    assert metric_value(metrics, "optiserve_live_compared_requests_total", model="unfaithful", result="disagree") >= 1


def test_a_faithful_variant_over_the_same_traffic_is_not_rolled_back(server, models, mlp):
    url, count = server.url, 100
    assert put(url, "/models/faithful/guard", {"min_agreement": 0.99, "window": count}).status_code == 200
    assert put(url, "/models/faithful/routing", {"mode": "shadow", "serve": "optimized", "sample": 1.0}).status_code == 200
    assert set(send(url, "faithful", mlp[1][0], count)) == {"optimized"}
    live = wait_until(lambda: (s := status(url, "faithful")["live"])["fidelity"]["compared"] >= count and s, "every comparison")
    assert live["fidelity"]["agreement"] == 1.0
    assert live["fidelity"]["cosine_mean"] == pytest.approx(1.0)
    assert live["fidelity"]["agreement_lower"] == pytest.approx(count / (count + 1.959964**2), abs=1e-4)
    assert live["guard"]["state"] == "ok"
    assert {entry["variant"] for entry in live["latency"]} == {"original", "optimized"}
    # The shadow runs at the lowest priority: its figure is its thread's CPU time, and says so.
    assert {(entry["variant"], entry["clock"]) for entry in live["latency"]} == {("optimized", "wall"), ("original", "thread_cpu")}
    kinds = [e["kind"] for e in requests.get(f"{url}/models/faithful/events", timeout=30).json()["events"]]
    assert kinds == ["guard", "routing"]
    assert status(url, "faithful")["routing"]["mode"] == "shadow"


def test_split_shares_land_within_a_binomial_bound_and_sticky_keys_keep_their_variant(server, models, mlp):
    url, share, count = server.url, 0.3, 300
    assert put(url, "/models/faithful/routing", {"mode": "split", "optimized_share": share}).status_code == 200
    served = send(url, "faithful", mlp[1][0], count, batch=1)
    optimized = served.count("optimized")
    spread = math.sqrt(count * share * (1 - share))
    assert abs(optimized - count * share) < 4.5 * spread, f"{optimized} of {count} to optimized at share {share}"

    keys = [f"user-{i}" for i in range(30)]
    first = {key: served_variant(predict(url, "faithful", mlp[1][0][:1], routing_key=key)) for key in keys}
    assert set(first.values()) == {"original", "optimized"}  # 30 keys at 0.3: both sides, all but surely
    for key in keys:
        again = requests.post(
            url + "/predict", json={"model": "faithful", "inputs": [tensor_list(mlp[1][0][:1])]}, headers={"X-Routing-Key": key}, timeout=30
        )
        assert served_variant(again) == first[key]
        v2 = requests.post(url + "/v2/models/faithful/infer", json=v2_body(mlp[1][0][:1]), headers={"X-Routing-Key": key}, timeout=30)
        assert v2.status_code == 200, v2.text
        assert v2.json()["model_version"] == first[key]
    # A version in the path wins over the policy.
    explicit = requests.post(url + "/v2/models/faithful/versions/original/infer", json=v2_body(mlp[1][0][:1]), timeout=30)
    assert explicit.json()["model_version"] == "original"
    # /v2 answers count in the same per-model, per-variant series as /predict.
    metrics = requests.get(f"{url}/metrics", timeout=30).text
    v2_counts = {v: metric_value(metrics, "optiserve_requests_total", endpoint="/v2/models/{model}/infer", model="faithful", variant=v) for v in first.values()}
    assert v2_counts == {v: float(list(first.values()).count(v)) for v in set(first.values())}


def tensor_list(tensor: torch.Tensor) -> dict:
    return {"shape": list(tensor.shape), "datatype": "FP32", "data": tensor.reshape(-1).tolist()}


def v2_body(tensor: torch.Tensor) -> dict:
    return {"inputs": [{"name": "x", **tensor_list(tensor)}]}


def test_live_inputs_outside_the_calibration_range_raise_a_drift_warning(server, models, mlp):
    url = server.url
    assert put(url, "/models/unoptimized/routing", {"mode": "pinned", "variant": "original"}).status_code == 200
    send(url, "unoptimized", mlp[1][0], 10)
    calm = wait_until(lambda: (s := status(url, "unoptimized")["live"])["requests"] >= 10 and s, "ten samples")
    assert calm["warnings"] == []
    assert calm["drift"][0]["outside_range_share"] == 0.0
    send(url, "unoptimized", mlp[1][0] * 20 + 5, 40)
    drifted = wait_until(lambda: (s := status(url, "unoptimized")["live"])["requests"] >= 50 and s, "fifty samples")
    (drift,) = drifted["drift"]
    assert drift["input"] == "x" and drift["outside_range_share"] > 0.5
    assert drift["mean_shift"] > 0.5 and drift["std_ratio"] > 2
    assert "calibration range" in drifted["warnings"][0]
    metrics = requests.get(f"{url}/metrics", timeout=30).text
    assert metric_value(metrics, "optiserve_input_outside_range_share", model="unoptimized", input="x") > 0.5


def test_routing_requests_are_checked_and_need_the_key(server, models):
    url = server.url
    shadow = {"mode": "shadow", "sample": 0.1}
    assert requests.put(f"{url}/models/faithful/routing", json=shadow, timeout=30).status_code == 401
    assert requests.post(f"{url}/models/faithful/promote", timeout=30).status_code == 401
    assert put(url, "/models/nope/routing", shadow).status_code == 404
    for bad in ({"mode": "split", "optimized_share": 1.5}, {"mode": "sideways"}, {"mode": "pinned", "variant": "fastest"}):
        assert put(url, "/models/faithful/routing", bad).status_code == 422
    assert put(url, "/models/faithful/guard", {"window": 100}).status_code == 422  # no threshold
    refused = put(url, "/models/unoptimized/routing", shadow)
    assert refused.status_code == 409 and "no optimized variant" in refused.json()["error"]["message"]
    assert requests.post(f"{url}/models/unoptimized/promote", headers=AUTH, timeout=30).status_code == 409


@pytest.mark.parametrize(
    "path, body, field",
    [
        ("routing", {"mode": "split", "optimized_share": "0.5"}, "optimized_share"),
        ("routing", {"mode": "split", "optimized_share": True}, "optimized_share"),
        ("routing", {"mode": "shadow", "sample": "1"}, "sample"),
        ("routing", {"mode": "pinned", "variant": "original", "version": 10**19}, "version"),
        ("routing", {"mode": "pinned", "variant": "original", "version": True}, "version"),
        ("guard", {"min_cosine": -1}, "min_cosine"),
        ("guard", {"min_cosine": "0.9"}, "min_cosine"),
        ("guard", {"min_agreement": 0}, "min_agreement"),
        ("guard", {"min_agreement": True}, "min_agreement"),
        ("guard", {"min_cosine": 0.9, "window": 100.0}, "window"),
        ("guard", {"min_cosine": 0.9, "version": 12345678901234567890}, "version"),
    ],
    ids=[
        "share_string", "share_bool", "sample_string", "version_20_digits", "version_bool",
        "min_cosine_negative", "min_cosine_string", "min_agreement_zero", "min_agreement_bool", "window_float", "guard_version",
    ],
)
def test_routing_and_guard_refuse_a_string_or_bool_for_a_number_and_meaningless_bounds(server, models, path, body, field):
    refused = put(server.url, f"/models/faithful/{path}", body)
    assert refused.status_code == 422, refused.text
    assert field in refused.json()["error"]["message"]


def test_routing_and_guard_still_take_json_integers_for_numbers_and_read_back_what_they_stored(server, models):
    url = server.url
    assert put(url, "/models/faithful/routing", {"mode": "split", "optimized_share": 1, "sample": 0, "version": 1}).status_code == 200
    assert status(url, "faithful")["routing"] == {"mode": "split", "optimized_share": 1.0, "sample": 0.0, "version": 1}
    assert put(url, "/models/faithful/guard", {"min_cosine": 1, "window": 100}).status_code == 200
    assert status(url, "faithful")["guard"]["min_cosine"] == 1.0
    assert put(url, "/models/faithful/routing", {"mode": "pinned", "variant": "optimized"}).status_code == 200


@pytest.mark.parametrize(
    "config, field",
    [
        ({"min_speedup": "1.5"}, "min_speedup"),
        ({"min_speedup": True}, "min_speedup"),
        ({"threads": 1.0}, "threads"),
        ({"threads": True}, "threads"),
        ({"tolerance": {"metric": "cosine", "threshold": "0.99"}}, "threshold"),
        ({"tolerance": {"metric": "cosine", "threshold": -1}}, "threshold"),
        ({"tolerance": {"metric": "agreement", "threshold": 2}}, "threshold"),
        ({"tolerance": {"metric": "agreement", "threshold": 0.99, "cosine_floor": -0.5}}, "cosine_floor"),
        ({"latency": {"rounds": "10"}}, "rounds"),
        ({"force": 1, "plan": [{"pass": "freeze"}]}, "force"),
    ],
    ids=["string_float", "bool_float", "float_int", "bool_int", "string_threshold", "negative_cosine", "agreement_above_1", "negative_floor", "string_rounds", "int_bool"],
)
def test_an_upload_config_with_a_string_or_bool_for_a_number_is_a_422(server, mlp, config, field):
    refused = upload(server.url, mlp[0], mlp[1], name="strict-config", config=config)
    assert refused.status_code == 422, refused.text
    assert field in refused.json()["error"]["message"]


def test_a_policy_and_its_events_survive_kill_9_and_restart(tmp_path, mlp):
    archive, inputs = mlp
    store = tmp_path / "store"
    with running(store) as first:
        model_id = upload(first.url, archive, inputs, name="kept", config=FORCED_FREEZE).json()["id"]
        wait_for(first.url, model_id)
        assert put(first.url, "/models/kept/guard", {"min_cosine": 0.999, "window": 50}).status_code == 200
        assert requests.post(f"{first.url}/models/kept/promote", json={"reason": "canary looked fine"}, headers=AUTH, timeout=30).status_code == 200
        assert put(first.url, "/models/kept/routing", {"mode": "split", "optimized_share": 0.25, "sample": 0.5}).status_code == 200
        before = requests.get(f"{first.url}/models/kept/events", timeout=30).json()["events"]
        first.kill()
    with running(store) as second:
        after = status(second.url, "kept")
        assert after["routing"] == {"mode": "split", "optimized_share": 0.25, "sample": 0.5, "version": 1}
        assert after["guard"]["min_cosine"] == 0.999 and after["guard"]["window"] == 50
        assert requests.get(f"{second.url}/models/kept/events", timeout=30).json()["events"] == before
        assert [e["kind"] for e in before] == ["guard", "promote", "routing"]
        assert before[1]["reason"] == "canary looked fine"


def test_the_client_and_cli_route_promote_and_show_the_live_ab_table(server, models, mlp, capsys, monkeypatch):
    from clients.cli import main
    from clients.client import OptiserveClient

    monkeypatch.setenv("OPTISERVE_API_KEY", AUTH["Authorization"].removeprefix("Bearer "))
    client = OptiserveClient(server.url)
    with pytest.raises(ValueError, match="exactly one"):
        client.route("faithful", split=0.5, pin="original")
    assert main(["route", "faithful", "--shadow", "1", "--serve", "original", "--url", server.url]) == 0
    assert "the original variant serves; 100% of requests shadowed on the other" in capsys.readouterr().out
    for row in range(12):
        assert client.predict("faithful", mlp[1][0][row : row + 2].numpy(), routing_key=f"k{row}").variant == "original"
    wait_until(lambda: client.model("faithful").live.fidelity.compared >= 12, "twelve comparisons")
    assert main(["ab", "faithful", "--url", server.url]) == 0
    table = capsys.readouterr().out
    assert "the original variant serves; 100% of requests shadowed on the other" in table
    rows = [line.split()[0] for line in table.splitlines() if line.strip().startswith(("original ", "optimized "))]
    # Sorted by variant; a variant that both served and shadowed in the window has a row per clock.
    assert list(dict.fromkeys(rows)) == ["optimized", "original"]
    assert "thread CPU (shadow)" in table and "wall (served)" in table
    assert "agreement 1.0000" in table and "guard: " in table
    assert "routing by user" in table
    promoted = client.promote("faithful", reason="shadow agreed")
    assert promoted.routing.variant == "optimized"
    assert client.events("faithful")[-1].reason == "shadow agreed"
    assert main(["rollback", "faithful", "--reason", "just because", "--url", server.url]) == 0
    assert "all traffic to the original variant" in capsys.readouterr().out
    assert [e.kind for e in client.events("faithful", limit=2)] == ["promote", "rollback"]
    assert main(["route", "faithful", "--split", "1.5", "--url", server.url]) == 2
