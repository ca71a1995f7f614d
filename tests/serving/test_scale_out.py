"""Scale-out for real: two API replicas (--no-jobs) and two job workers on one shared store, a real
PostgreSQL and a real S3 API (moto_server). Uploads, variants and deletes made through one replica
are seen by the other; each job runs once; a worker killed mid-job loses nothing."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import os

import pytest
import requests

import tiny_models
from real_services import Replica, Worker
from server_harness import AUTH, FORCED_FREEZE, TEST_ENV, predict, upload, wait_for, wait_until

psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed (pip install -e ./clients -e '.[shared,test]')")
LEASE_SECONDS = 2.0
# A job that takes seconds (the most timing rounds a config may ask, capped at 5 s of timing): long enough to be
# seen optimizing, killed mid-way, or run side by side with another.
# A job long enough to be caught running (seconds, on the CNN): every timed round is run, with no max_seconds cut.
SLOW_FREEZE = {**FORCED_FREEZE, "latency": {"rounds": 2000, "warmup": 1, "max_seconds": 600}}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, postgres, s3):
    dsn, bucket = postgres.new_database(), s3.new_bucket()
    shared = ["--store", dsn, "--artifacts", f"s3://{bucket}/prod"]
    env = {**os.environ, **TEST_ENV, **s3.env, "OPTISERVE_JOB_LEASE": str(LEASE_SECONDS)}
    root = tmp_path_factory.mktemp("cluster")
    replicas = [Replica(root / f"api-{i}", shared, env) for i in range(2)]
    workers = []
    try:
        for replica in replicas:
            replica.start()
        workers = [Worker(root / f"worker-{i}", shared, env) for i in range(2)]
        yield {"a": replicas[0], "b": replicas[1], "workers": workers, "dsn": dsn, "bucket": bucket, "s3": s3}
    finally:
        for worker in workers:
            worker.stop()
        for replica in replicas:
            if replica.process is not None and replica.process.poll() is None:
                assert not replica.stop(), "processes left after SIGTERM"


def jobs_table(dsn: str, *model_ids: str) -> dict[str, dict]:
    with psycopg.connect(dsn, row_factory=psycopg.rows.dict_row) as connection:
        rows = connection.execute("SELECT model_id, attempts, lease, worker FROM jobs WHERE model_id = ANY(%s)", (list(model_ids),)).fetchall()
    return {row["model_id"]: row for row in rows}


def served(url: str, model: str, x) -> tuple[str, list]:
    answer = predict(url, model, x)
    assert answer.status_code == 200, answer.text
    return answer.json()["variant"], answer.json()["outputs"]


def test_upload_through_one_replica_serves_through_both(cluster):
    a, b = cluster["a"], cluster["b"]
    archive, inputs = tiny_models.mlp()
    x = inputs[0][:2]
    model_id = upload(a.url, archive, inputs, name="shared-mlp", config=FORCED_FREEZE).json()["id"]
    # At once, before any job: the index row and the original's object are both committed.
    original = served(b.url, "shared-mlp", x)
    assert served(a.url, "shared-mlp", x)[1] == original[1]
    assert wait_for(b.url, model_id)["state"] == "ready"
    # The variant a worker just stored serves from both replicas on their next batch.
    assert served(a.url, "shared-mlp", x)[0] == served(b.url, "shared-mlp", x)[0] == "optimized"
    assert requests.get(f"{b.url}/models/{model_id}/report", timeout=10).status_code == 200


def test_jobs_run_side_by_side_each_exactly_once(cluster):
    a, b = cluster["a"], cluster["b"]
    archive, inputs = tiny_models.cnn_bn()
    # Uploaded at the same moment, so that both jobs are queued before either worker finishes one.
    with ThreadPoolExecutor(2) as uploads:
        answers = list(uploads.map(lambda pair: upload(pair[1], archive, inputs, name=f"twin-{pair[0]}", config=SLOW_FREEZE), enumerate((a.url, b.url))))
    ids = [answer.json()["id"] for answer in answers]
    # Both optimizing at once: one on each worker.
    wait_until(lambda: all(requests.get(f"{a.url}/models/{i}", timeout=10).json()["state"] == "optimizing" for i in ids), "two jobs running at once")
    for model_id in ids:
        assert wait_for(a.url, model_id, timeout=180)["state"] == "ready"
    rows = jobs_table(cluster["dsn"], *ids)
    assert [(rows[i]["attempts"], rows[i]["lease"]) for i in ids] == [(1, 1), (1, 1)]  # claimed once, never re-claimed
    assert len({rows[i]["worker"] for i in ids}) == 2


def test_a_model_deleted_through_one_replica_is_gone_from_the_other(cluster):
    a, b, objects = cluster["a"], cluster["b"], cluster["s3"]
    archive, inputs = tiny_models.mlp()
    model_id = upload(a.url, archive, inputs, name="doomed", config=FORCED_FREEZE).json()["id"]
    wait_for(a.url, model_id)
    assert served(b.url, "doomed", inputs[0][:1])[0] == "optimized"
    assert objects.keys(cluster["bucket"], f"prod/models/{model_id}/")
    assert requests.delete(f"{a.url}/models/{model_id}", headers=AUTH, timeout=30).status_code == 200
    assert requests.get(f"{b.url}/models/{model_id}", timeout=10).status_code == 404
    assert predict(b.url, "doomed", inputs[0][:1]).status_code == 404
    assert objects.keys(cluster["bucket"], f"prod/models/{model_id}/") == []


def test_kill_9_of_a_worker_mid_job_the_other_finishes_it(cluster):
    a, b = cluster["a"], cluster["b"]
    archive, inputs = tiny_models.cnn_bn()
    model_id = upload(a.url, archive, inputs, name="orphaned-job", config=SLOW_FREEZE).json()["id"]
    wait_for(a.url, model_id, states=("optimizing",))
    holder = jobs_table(cluster["dsn"], model_id)[model_id]["worker"]
    (victim,) = [w for w in cluster["workers"] if holder.endswith(f":{w.process.pid}")]
    victim.kill()
    # Its lease runs out; the surviving worker re-queues the job and runs it to the end.
    status = wait_for(b.url, model_id, timeout=180)
    assert status["state"] == "ready" and status["attempts"] == 2, status
    assert "its worker stopped renewing the lease" in status["notes"][-1]
    row = jobs_table(cluster["dsn"], model_id)[model_id]
    assert row["lease"] == 2 and row["worker"] != holder
    # Nothing lost: what was served before still is, through both replicas.
    assert served(a.url, "orphaned-job", inputs[0][:2])[0] == served(b.url, "shared-mlp", tiny_models.mlp()[1][0][:2])[0] == "optimized"
