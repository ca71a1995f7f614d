"""The shipped Grafana dashboard against a real Prometheus scraping a real server under shadow traffic.

Every PromQL expression of every panel goes through Prometheus's HTTP API and must return data with
a finite value: a renamed metric or label, or a broken expression, fails here rather than showing an
empty panel in a user's Grafana.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import threading

import pytest
import requests

import tiny_models
from server_harness import AUTH, FORCED_FREEZE, REPO, free_port, predict, server_fixture, upload, wait_for, wait_until

server = server_fixture()

PROMETHEUS = shutil.which("prometheus")
pytestmark = pytest.mark.skipif(
    PROMETHEUS is None, reason="the `prometheus` binary is not installed (Debian: apt-get install prometheus; .ci/run installs it)"
)
DASHBOARD = REPO / "deploy" / "grafana" / "optiserve.json"
SCRAPE_CONFIG = REPO / "deploy" / "prometheus" / "prometheus.yml"


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    # Grafana's variables as "All" selects them.
    return [target["expr"].replace("$model", ".+") for panel in dashboard["panels"] for target in panel["targets"]]


@pytest.fixture
def prometheus(server, tmp_path):
    config = SCRAPE_CONFIG.read_text()
    assert config.count("127.0.0.1:8000") == 1 and config.count("scrape_interval: 15s") == 1
    config = config.replace("127.0.0.1:8000", f"127.0.0.1:{server.port}").replace("scrape_interval: 15s", "scrape_interval: 1s")
    (tmp_path / "prometheus.yml").write_text(config)
    port = free_port()
    log = (tmp_path / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _ok(url + "/-/ready"), "Prometheus to start", 90, tmp_path / "prometheus.log")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def _ok(url: str) -> bool:
    try:
        return requests.get(url, timeout=5).status_code == 200
    except requests.ConnectionError:
        return False


def query(prometheus: str, expr: str) -> list[dict]:
    answer = requests.get(prometheus + "/api/v1/query", params={"query": expr}, timeout=30).json()
    assert answer["status"] == "success", f"{expr}: {answer}"
    return answer["data"]["result"]


def has_finite_value(prometheus: str, expr: str) -> bool:
    return any(math.isfinite(float(series["value"][1])) for series in query(prometheus, expr))


def test_every_dashboard_expression_returns_data_from_a_real_prometheus(server, prometheus):
    archive, inputs = tiny_models.mlp()
    model_id = upload(server.url, archive, inputs, name="dashboarded", config=FORCED_FREEZE).json()["id"]
    assert wait_for(server.url, model_id)["state"] == "ready"
    shadow = {"mode": "shadow", "serve": "optimized", "sample": 1.0}
    assert requests.put(f"{server.url}/models/dashboarded/routing", json=shadow, headers=AUTH, timeout=30).status_code == 200
    # A rollback by hand, so the rollback panel has a series; then shadow traffic again.
    assert requests.post(f"{server.url}/models/dashboarded/rollback", headers=AUTH, timeout=30).status_code == 200
    assert requests.put(f"{server.url}/models/dashboarded/routing", json=shadow, headers=AUTH, timeout=30).status_code == 200

    stop = threading.Event()

    def traffic() -> None:
        row = 0
        while not stop.is_set():
            assert predict(server.url, "dashboarded", inputs[0][row % 60 :][:2]).status_code == 200
            row += 1

    sender = threading.Thread(target=traffic, daemon=True)
    sender.start()
    try:
        gaps = dashboard_expressions()
        assert len(gaps) >= 12

        def every_panel_has_data() -> bool:
            gaps[:] = [expr for expr in gaps if not has_finite_value(prometheus, expr)]
            return not gaps

        try:
            wait_until(every_panel_has_data, "every panel's data", 90)
        except TimeoutError:
            pytest.fail(f"no finite data for: {gaps}")
    finally:
        stop.set()
        sender.join(timeout=30)
    assert query(prometheus, 'up{job="optiserve"}')[0]["value"][1] == "1"
