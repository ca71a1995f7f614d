"""The client distribution alone: `pip install ./clients` into a fresh venv without torch, then its
`optiserve` commands and `client.report()` against a real server, and `optiserve serve` saying what
to install. Nothing the client runs may import torch, the runtimes, the server or the pipeline."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import numpy
import pytest

import tiny_models
from server_harness import FORCED_FREEZE, REPO, server_fixture

server = server_fixture()
MLP_ARCHIVE, MLP_INPUTS = tiny_models.mlp()
# What a client without the server must never load.
HEAVY = ("torch", "onnx", "onnxruntime", "openvino", "nncf", "fastapi", "litserve", "server", "optimizer_pipeline")


class ClientVenv:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.python = root / "bin" / "python"
        self.optiserve = root / "bin" / "optiserve"

    def run(self, *argv: str | Path, cwd: Path) -> subprocess.CompletedProcess:
        # No PYTHONPATH: only what the venv installed is importable, as for a user of the client.
        env = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}
        return subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=180)


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> ClientVenv:
    folder = tmp_path_factory.mktemp("client-dist")
    # Built from a copy, so that the build leaves nothing in the checkout.
    source = shutil.copytree(REPO / "clients", folder / "clients", ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"))
    venv.create(folder / "venv", with_pip=True)
    env = ClientVenv(folder / "venv")
    installed = env.run(env.python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", source, cwd=folder)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return env


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A user's files, numpy only (the venv has no torch to read a .pt input with); the model is a TorchScript archive."""
    folder = tmp_path_factory.mktemp("client-files")
    (folder / "mlp.pt").write_bytes(MLP_ARCHIVE)
    numpy.save(folder / "calibration.npy", MLP_INPUTS[0].numpy())
    numpy.save(folder / "x.npy", MLP_INPUTS[0][:2].numpy())
    (folder / "config.json").write_text(json.dumps(FORCED_FREEZE))
    return folder


def test_the_venv_has_the_client_and_no_torch(client_venv, files):
    found = client_venv.run(client_venv.python, "-c", "import importlib.util as u; print([u.find_spec(m) is None for m in ('torch', 'server', 'optimizer_pipeline')])", cwd=files)
    assert found.stdout.strip() == "[True, True, True]", found.stdout + found.stderr


def test_the_client_commands_work_against_a_real_server(client_venv, files, server):
    def optiserve(*argv: str) -> str:
        result = client_venv.run(client_venv.optiserve, *argv, "--url", server.url, cwd=files)
        assert result.returncode == 0, f"optiserve {' '.join(argv)}: {result.stderr}"
        return result.stdout

    uploaded = optiserve("upload", "mlp.pt", "calibration.npy", "--config", "config.json", "--name", "dist-mlp", "--wait")
    assert "uploaded dist-mlp" in uploaded and "dist-mlp (id" in uploaded
    assert "dist-mlp" in optiserve("models")
    assert "ready; serves optimized" in optiserve("status", "dist-mlp")
    assert json.loads(optiserve("status", "dist-mlp", "--json"))["name"] == "dist-mlp"
    predicted = optiserve("predict", "dist-mlp", "x.npy")
    assert predicted.startswith("dist-mlp (optimized)") and "float32 [2, " in predicted
    report = optiserve("report", "dist-mlp")
    assert "Pareto front" in report and "chosen: #1 freeze" in report
    assert json.loads(optiserve("report", "dist-mlp", "--json"))["chosen"]["candidate"] == "freeze"
    assert "50.0% of traffic to the optimized variant" in optiserve("route", "dist-mlp", "--split", "0.5", "--sample", "0.2")
    assert "dist-mlp (id" in optiserve("ab", "dist-mlp")

    # The same commands and the Python client in one process: what they loaded is in sys.modules.
    script = f"""
import json, sys
import numpy
from clients import OptiserveClient
from clients.cli import main
url = {server.url!r}
codes = [main([*argv, "--url", url]) for argv in (["models"], ["status", "dist-mlp"], ["report", "dist-mlp"], ["predict", "dist-mlp", "x.npy"], ["ab", "dist-mlp"])]
client = OptiserveClient(url)
report = client.report("dist-mlp")
prediction = client.predict("dist-mlp", numpy.load("x.npy"))
print(json.dumps({{"codes": codes, "chosen": report.chosen.candidate, "rows": len(report.candidates),
                   "output": type(prediction.output).__name__, "heavy": [m for m in {HEAVY!r} if m in sys.modules]}}))
"""
    ran = client_venv.run(client_venv.python, "-c", script, cwd=files)
    assert ran.returncode == 0, ran.stderr
    answer = json.loads(ran.stdout.splitlines()[-1])
    assert answer == {"codes": [0, 0, 0, 0, 0], "chosen": "freeze", "rows": 1, "output": "ndarray", "heavy": []}

    assert optiserve("delete", "dist-mlp").strip() == "deleted dist-mlp"
    assert "dist-mlp" not in optiserve("models")


@pytest.mark.parametrize("argv", [["serve", "--store", "store"], ["worker"], ["optimize", "mlp.pt", "calibration.npy", "--out", "out"]])
def test_server_commands_say_what_to_install(client_venv, files, argv):
    result = client_venv.run(client_venv.optiserve, *argv, cwd=files)
    assert result.returncode != 0
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"error: optiserve {argv[0]} needs the server") and 'pip install "torch==2.13.0" && pip install -e ./clients -e .' in line, line


def test_the_server_venv_still_runs_the_client_commands_without_loading_the_server():
    # The full install: `optiserve status` and friends do not import the server or torch either.
    script = f"import sys; from clients.cli import build_parser; build_parser(); import clients; print([m for m in {HEAVY!r} if m in sys.modules])"
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr
