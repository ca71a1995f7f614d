"""The Python client and the `optiserve` server commands against a real server."""

from __future__ import annotations

import argparse
import json

import numpy
import pytest
import torch

import tiny_models
from clients import OptiserveClient, OptiserveError
from clients.server_commands import add_commands
from server_harness import FORCED_FREEZE, server_fixture
from tiny_models import local_forward

server = server_fixture()


def run_command(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="optiserve")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return args.handler(args)


@pytest.fixture(scope="module")
def client(server) -> OptiserveClient:
    return OptiserveClient(server.url, timeout=60)


@pytest.fixture(scope="module")
def cnn(client, tmp_path_factory):
    """A CNN uploaded from files on disk, optimized to completion."""
    archive, inputs = tiny_models.cnn_bn()
    folder = tmp_path_factory.mktemp("upload")
    (folder / "cnn.pt").write_bytes(archive)
    (folder / "calibration.pt").write_bytes(tiny_models.calibration_bytes(inputs))
    torch.save(local_forward(archive, *inputs).argmax(1), folder / "labels.pt")
    accepted = client.upload(folder / "cnn.pt", folder / "calibration.pt", labels=folder / "labels.pt", config=FORCED_FREEZE)
    assert accepted.name == "cnn" and accepted.state == "queued"  # name derived from the file name
    return accepted.id, archive, inputs


def test_wait_shows_progress_and_returns_the_finished_status(client, cnn, capsys):
    model_id, archive, _ = cnn
    status = client.wait(model_id, timeout=120)
    assert status.state == "ready" and status.default_variant == "optimized"
    assert status.chosen.candidate == "freeze" and status.chosen.fidelity.cosine > 0.9999
    assert {v.name for v in status.variants} == {"original", "optimized"}
    assert status.has_labels and client.report(model_id).calibration.labels
    assert "100.0%" in capsys.readouterr().err


@pytest.mark.parametrize("form", ["tensor", "numpy", "float64 numpy", "list"])
def test_predict_takes_tensors_arrays_and_lists_and_returns_the_same_kind(client, cnn, form):
    model_id, archive, inputs = cnn
    client.wait(model_id, timeout=120, progress=False)
    x = inputs[0][:3]
    sent = {"tensor": x, "numpy": x.numpy(), "float64 numpy": x.numpy().astype("float64"), "list": x.tolist()}[form]
    result = client.predict(model_id, sent, variant="original")
    assert result.variant == "original" and result.inference_ms > 0
    output = result.output
    if form == "tensor":
        assert isinstance(output, torch.Tensor)
    else:  # the client hands back numpy unless it was handed torch
        assert isinstance(output, numpy.ndarray)
        output = torch.from_numpy(output)
    assert output.dtype == torch.float32
    torch.testing.assert_close(output, local_forward(archive, x))


def test_compare_returns_both_outputs_and_fidelity(client, cnn):
    model_id, archive, inputs = cnn
    client.wait(model_id, timeout=120, progress=False)
    comparison = client.compare(model_id, inputs[0][:5])
    assert comparison.fidelity.agreement == 1.0
    torch.testing.assert_close(comparison.outputs["original"]["output"], local_forward(archive, inputs[0][:5]))
    torch.testing.assert_close(comparison.outputs["optimized"]["output"], comparison.outputs["original"]["output"], rtol=1e-4, atol=1e-5)
    assert set(comparison.inference_ms) == {"original", "optimized"}


def test_models_report_download_and_delete(client):
    archive, inputs = tiny_models.mlp()
    accepted = client.upload(archive, tiny_models.calibration_bytes(inputs), config=json.dumps(FORCED_FREEZE), name="temp")
    client.wait(accepted.id, timeout=120, progress=False)
    assert "temp" in {m.name for m in client.models()}
    report = client.report("temp")
    assert report.chosen.candidate == "freeze" and report.model.inputs == ["x"]
    assert client.download("temp", "original") == archive
    client.delete("temp")
    with pytest.raises(OptiserveError) as error:
        client.model("temp")
    assert error.value.status == 404 and "temp" in error.value.message


def test_server_errors_raise_with_status_and_message(client, cnn):
    with pytest.raises(OptiserveError) as error:
        client.upload(b"not a model", numpy.zeros((4, 3), dtype=numpy.float32).tobytes())
    assert error.value.status == 422 and error.value.code == "invalid_model"
    with pytest.raises(OptiserveError) as error:
        client.predict(cnn[0], torch.zeros(2, 3, 8))
    assert error.value.status == 400 and "float32" in error.value.message


def test_cli_upload_models_status_report(server, tmp_path, capsys):
    archive, inputs = tiny_models.mlp()
    (tmp_path / "net.pt").write_bytes(archive)
    (tmp_path / "calib.pt").write_bytes(tiny_models.calibration_bytes(inputs))
    (tmp_path / "config.json").write_text(json.dumps(FORCED_FREEZE))
    url = ["--url", server.url]
    assert run_command("upload", str(tmp_path / "net.pt"), str(tmp_path / "calib.pt"), "--config", str(tmp_path / "config.json"), "--name", "cli-net", "--wait", *url) == 0
    out = capsys.readouterr().out
    assert "uploaded cli-net" in out and "cli-net (id " in out and ": ready;" in out
    assert run_command("models", *url) == 0
    assert "cli-net" in capsys.readouterr().out
    assert run_command("status", "cli-net", *url) == 0
    assert "chosen: freeze" in capsys.readouterr().out
    assert run_command("report", "cli-net", "--json", *url) == 0
    assert json.loads(capsys.readouterr().out)["chosen"]["candidate"] == "freeze"
    assert run_command("status", "nobody", *url) == 4  # ExitCode.SERVER
    assert "404" in capsys.readouterr().err
