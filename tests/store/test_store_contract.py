"""The store's contract, one suite run against both backends: embedded (SQLite + a directory) and
shared (a real PostgreSQL + a real S3 API from moto_server)."""

from __future__ import annotations

import threading
import time

import pytest

from server.settings import Settings
from server.store import NameTakenError, Store, new_model_id, now, open_store
from server.store.s3_artifacts import S3Artifacts
from wire.contract.live import LiveSample
from wire.contract.models import ModelMeta, RoutingEvent, VariantInfo
from wire.contract.report import Chosen, ModelSummary
from wire.contract.routing import Guard, Pinned

SUMMARY = ModelSummary(
    inputs=["x"], input_shapes=[[1, 4]], input_dtypes=["float32"], outputs=["y"], output_shapes=[[1, 2]], parameters=10, size_bytes=3, exported_methods=[]
)
CHOSEN = Chosen(candidate="freeze", reason="faster", speedup=1.5)


@pytest.fixture(params=["embedded", "shared"])
def make_store(request, tmp_path, monkeypatch):
    """Stores on one backend; every call opens another handle on the same store (as another process would)."""
    if request.param == "embedded":
        settings = {"store": str(tmp_path / "store")}
    else:
        database, objects = request.getfixturevalue("postgres"), request.getfixturevalue("s3")
        for name, value in objects.env.items():
            monkeypatch.setenv(name, value)
        settings = {"store": database.new_database(), "artifacts": f"s3://{objects.new_bucket()}/team-a", "api_key": "k"}
    handles = []

    def make(lease_seconds: float = 30.0, local: str = "state", read_only: bool = False) -> Store:
        handle = open_store(Settings(**settings, state_dir=tmp_path / local, job_lease=lease_seconds), read_only=read_only)
        handles.append(handle)
        return handle

    yield make
    for handle in handles:
        getattr(handle.db, "close", lambda: None)()


def add(store: Store, name: str, replace: bool = False, model: bytes = b"model-bytes") -> str:
    model_id = new_model_id()
    store.stage_files(model_id, {"original.pt": model, "calibration.bin": b"calibration-" + name.encode()})
    store.add_model(ModelMeta(id=model_id, name=name, created_at=now(), summary=SUMMARY), replace=replace)
    return model_id


def stored_keys(store: Store) -> set[str]:
    """Every file the artifact store holds, as backend-specific names."""
    artifacts = store.artifacts
    if isinstance(artifacts, S3Artifacts):
        return {key for key, _ in artifacts.objects(artifacts.prefix)}
    return {str(path.relative_to(artifacts.models_dir)) for path in artifacts.models_dir.rglob("*") if path.is_file()}


def test_add_get_replace_delete(make_store):
    store, other = make_store(), make_store(local="other")
    first = add(store, "alpha")
    info = other.get("alpha")  # another process sees it at once
    assert info.id == first and info.state == "queued" and [v.name for v in info.variants] == ["original"]
    assert other.file(first, "original.pt").read_bytes() == b"model-bytes"
    assert other.file(first, "calibration.bin").read_bytes() == b"calibration-alpha"
    assert other.file(first, "labels.bin") is None
    with pytest.raises(NameTakenError):
        add(store, "alpha")
    second = add(store, "alpha", replace=True, model=b"new-model")
    assert other.get(first) is None and other.get("alpha").id == second
    assert other.file(second, "original.pt").read_bytes() == b"new-model"
    assert not [key for key in stored_keys(store) if first in key]  # the replaced model's files went with it
    assert [info.name for info in other.list()] == ["alpha"]
    assert other.delete(second) and not other.delete(second)
    assert store.get("alpha") is None and not store.exists(second) and store.file(second, "original.pt") is None
    assert not [key for key in stored_keys(store) if second in key]


def test_job_moves_queued_optimizing_ready_under_its_lease(make_store):
    store = make_store()
    model_id = add(store, "beta")
    claim = store.claim_next_job("w1")
    assert claim.model_id == model_id and store.claim_next_job("w2") is None
    store.set_progress(claim, "search", 0.5)
    info = store.get(model_id)
    assert (info.state, info.stage, info.progress, info.attempts) == ("optimizing", "search", 0.5, 1)
    assert store.renew_lease(claim)
    optimized = VariantInfo(name="optimized", runtime="torchscript", filename="optimized.pt", size_bytes=9, version=0)
    assert store.finish_job(claim, CHOSEN, 1.25, optimized, {"optimized.pt": b"optimized", "report.json": b"{}"})
    info = make_store(local="other").get(model_id)
    assert (info.state, info.default_variant, info.optimization_seconds, info.chosen) == ("ready", "optimized", 1.25, CHOSEN)
    assert store.file(model_id, "optimized.pt").read_bytes() == b"optimized"
    assert store.file(model_id, "report.json").read_bytes() == b"{}"
    assert not store.renew_lease(claim) and not store.fail_job(claim, "too late")  # a finished job is no one's
    assert store.claim_next_job("w1") is None  # nothing else queued
    other = add(store, "gamma")
    claim = store.claim_next_job("w1")
    assert claim.model_id == other and store.fail_job(claim, "no candidate qualified", 0.5)
    assert (store.get(other).state, store.get(other).error) == ("failed", "no candidate qualified")
    assert store.job_counts() == {"ready": 1, "failed": 1}


def test_a_lapsed_lease_is_requeued_and_its_holder_fenced_out(make_store):
    store = make_store(lease_seconds=0.2)
    model_id = add(store, "delta")
    stale = store.claim_next_job("dead-worker")
    actions = _poll(lambda: store.requeue_expired(max_attempts=2))
    assert actions == [f"{model_id}: re-queued after an interrupted attempt 1"]
    info = store.get(model_id)
    assert info.state == "queued" and "its worker stopped renewing the lease" in info.notes[-1]
    fresh = store.claim_next_job("live-worker")
    assert fresh.lease > stale.lease and store.get(model_id).attempts == 2
    # The presumed-dead worker wakes up: nothing it writes counts.
    assert not store.renew_lease(stale)
    store.set_progress(stale, "zombie", 0.9)
    assert store.get(model_id).stage == "starting"
    assert not store.finish_job(stale, CHOSEN, 1.0, None, {"report.json": b"stale"})
    assert not store.fail_job(stale, "stale")
    assert store.get(model_id).state == "optimizing"
    # The second lapse spends the last attempt: failed, not re-queued forever.
    assert _poll(lambda: store.requeue_expired(max_attempts=2))[0].startswith(f"{model_id}: failed")
    assert "stopped renewing the lease 2 time(s)" in store.get(model_id).error


def test_recover_and_hand_back(make_store):
    store = make_store()
    first, second = add(store, "one"), add(store, "two")
    mine, theirs = store.claim_next_job("me"), store.claim_next_job("them")
    store.hand_back_jobs("stopping", worker="me")  # only my job, and without spending its attempt
    assert (store.get(mine.model_id).state, store.get(mine.model_id).attempts) == ("queued", 0)
    assert store.get(theirs.model_id).state == "optimizing"
    # A server that alone runs the store's jobs re-queues every interrupted one at its start.
    assert store.recover(max_attempts=1) == [f"{theirs.model_id}: failed (the server stopped during optimization 1 time(s); not retried again "
                                             "(upload the model again, perhaps with fewer candidates or latency rounds))"]
    assert {store.get(first).state, store.get(second).state} == {"queued", "failed"}


def test_concurrent_claims_never_share_a_job(make_store):
    adder = make_store()
    ids = {add(adder, f"m{i}") for i in range(12)}
    claimed: list[str] = []
    errors: list[BaseException] = []

    def claimer(name: str) -> None:
        store = make_store(local=name)
        try:
            while (claim := store.claim_next_job(name)) is not None:
                claimed.append(claim.model_id)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=claimer, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and sorted(claimed) == sorted(ids)


def test_health_counts_timeouts_until_unhealthy(make_store):
    store = make_store()
    model_id = add(store, "slowpoke")
    store.record_timeout(model_id, "forward ran long", unhealthy_after=2)
    assert store.get(model_id).health.healthy and store.get(model_id).health.timeouts == 1
    store.record_timeout(model_id, "forward ran long", unhealthy_after=2)
    assert not store.get(model_id).health.healthy
    store.reset_health(model_id)
    assert store.get(model_id).health.healthy and store.get(model_id).health.timeouts == 0


def test_routing_events_and_live_samples(make_store):
    store = make_store()
    model_id = add(store, "routed")
    pinned = Pinned(variant="optimized")
    store.set_routing(model_id, pinned.model_dump_json(), RoutingEvent(at=now(), kind="routing", trigger="user", reason="pin", routing=pinned))
    guard = Guard(min_agreement=0.9)
    store.set_guard(model_id, guard, RoutingEvent(at=now(), kind="guard", trigger="user", reason="guard", guard=guard))
    info = store.get(model_id)
    assert (info.routing_revision, info.guard) == (1, guard) and info.routing == pinned
    rollback = RoutingEvent(at=now(), kind="rollback", trigger="guard", reason="unfaithful")
    assert not store.roll_back(model_id, revision=0, event=rollback)  # read before the last change: stale
    assert store.roll_back(model_id, revision=1, event=rollback)
    assert not store.roll_back(model_id, revision=1, event=rollback)  # the second of two replicas acting at once
    assert store.get(model_id).routing == Pinned(variant="original") and store.get(model_id).routing_revision == 2
    assert [event.kind for event in store.events(model_id)] == ["routing", "guard", "rollback"]
    assert [event.kind for event in store.events(model_id, limit=2)] == ["guard", "rollback"]
    assert sorted(store.event_counts()) == [("routed", "guard", "user", 1), ("routed", "rollback", "guard", 1), ("routed", "routing", "user", 1)]
    samples = [LiveSample(revision=2, served="original", served_ms=float(i)) for i in range(5)]
    store.record_live([(model_id, sample) for sample in samples] + [("no-such-model", samples[0])])
    assert [sample.served_ms for sample in store.live_samples(model_id, limit=3)] == [4.0, 3.0, 2.0]
    store.delete(model_id)
    assert store.live_samples(model_id, limit=10) == [] and store.events(model_id) == []


def test_sweep_removes_only_what_no_row_names(make_store):
    store = make_store()
    kept = add(store, "kept")
    before = stored_keys(store)
    # A crash between the files and their row: an upload that never committed.
    store.artifacts.put("never-indexed", {"original.pt": b"orphan"})
    assert stored_keys(store) > before
    assert store.sweep(min_age_seconds=3600) == []  # young: perhaps an upload whose row is about to commit
    assert store.sweep(min_age_seconds=0) and stored_keys(store) == before
    assert store.file(kept, "original.pt").read_bytes() == b"model-bytes"


def _poll(check, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)
    return value


def test_a_read_only_handle_reads_everything_and_writes_nothing(make_store):
    """How inference workers open the store: a model's code must not be able to rewrite the index."""
    writer = make_store()
    model_id = add(writer, "kept")
    reader = make_store(read_only=True, local="worker-state")
    assert reader.get("kept").id == model_id
    assert reader.file(model_id, "original.pt").read_bytes() == b"model-bytes"
    event = RoutingEvent(at=now(), kind="rollback", trigger="guard", reason="forged", routing=Pinned(variant="original"))
    writes = {
        "timeout": lambda: reader.record_timeout(model_id, "forged", 1),
        "routing": lambda: reader.set_routing(model_id, Pinned(variant="original").model_dump_json(), event),
        "rollback": lambda: reader.roll_back(model_id, 0, event),
        "live": lambda: reader.record_live([(model_id, LiveSample(revision=0, served="original", served_ms=1.0))]),
        "delete": lambda: reader.delete(model_id),
    }
    for name, write in writes.items():
        with pytest.raises(Exception, match="read-only|readonly") as refused:
            write()
        assert refused.type.__name__ in ("OperationalError", "ReadOnlySqlTransaction"), (name, refused.value)
    info = writer.get(model_id)
    assert info is not None and info.health.healthy and info.routing_revision == 0
    assert writer.live_samples(model_id, 10) == []
