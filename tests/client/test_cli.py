"""The `optiserve` command line, run for real: one-line errors with the exit code of their class, a
closed pipe, progress lines that fit the terminal, and predict, status and delete against a real server."""

from __future__ import annotations

import json
import os
import pty
import socket
import subprocess
import sys
from pathlib import Path

import numpy
import pytest
import torch

import tiny_models
from clients.cli import main
from clients.exit_codes import ExitCode
from clients.progress import ProgressBar
from cli_harness import CLI, cli_env, run_cli
from server_harness import FAST_LATENCY, FORCED_FREEZE, REPO, free_port, server_fixture
from tiny_models import local_forward

server = server_fixture()
MLP_ARCHIVE, MLP_INPUTS = tiny_models.mlp()
SAMPLE = MLP_INPUTS[0][:3].clone()



def assert_one_line_error(stderr: str, *mentions: str) -> None:
    """One `error:` line, last; before it at most the progress lines that `optimize` logs when stderr is no terminal."""
    *progress, error = stderr.splitlines()
    assert error.startswith("error: ") and all(line.startswith("[") for line in progress), stderr
    assert all(text in error for text in mentions), stderr


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The files a user has: a model, its calibration batch, a config, and inputs in each format."""
    folder = tmp_path_factory.mktemp("cli")
    (folder / "mlp.pt").write_bytes(MLP_ARCHIVE)
    (folder / "calibration.pt").write_bytes(tiny_models.calibration_bytes(MLP_INPUTS))
    (folder / "config.json").write_text(json.dumps(FORCED_FREEZE))
    numpy.save(folder / "x32.npy", SAMPLE.numpy())
    numpy.save(folder / "x64.npy", SAMPLE.numpy().astype(numpy.float64))
    numpy.savez(folder / "x.npz", SAMPLE.numpy())
    torch.save((SAMPLE,), folder / "x.pt")
    return folder


@pytest.fixture(scope="module")
def served(server, files: Path) -> str:
    """The MLP uploaded with the CLI and optimized to completion; returns its name."""
    code = main(["upload", str(files / "mlp.pt"), str(files / "calibration.pt"), "--config", str(files / "config.json"),
                 "--name", "cli-mlp", "--wait", "--url", server.url])
    assert code == ExitCode.OK
    return "cli-mlp"


# ---- errors: one line, one exit code per class ----


@pytest.mark.parametrize("command", [
    ["upload", "mlp.pt", "nosuch.pt", "--url", "http://127.0.0.1:9"],
    ["optimize", "mlp.pt", "nosuch.pt", "--out", "out"],
    ["predict", "cli-mlp", "nosuch.npy", "--url", "http://127.0.0.1:9"],
])
def test_a_missing_file_is_an_input_error_naming_it(files, command):
    result = run_cli(*command, cwd=files)
    assert result.returncode == ExitCode.INPUT
    assert_one_line_error(result.stderr, "nosuch.", "No such file or directory")


def test_optimize_of_a_file_that_is_not_a_model_is_an_input_error(files):
    result = run_cli("optimize", "calibration.pt", "calibration.pt", "--out", "out", cwd=files)
    assert result.returncode == ExitCode.INPUT
    assert_one_line_error(result.stderr, "TorchScript")
    assert not (files / "out").exists()


def test_optimize_with_a_config_that_is_not_json_is_an_input_error(files, tmp_path, capsys):
    (tmp_path / "config.json").write_text("{plan: freeze}")
    code = main(["optimize", str(files / "mlp.pt"), str(files / "calibration.pt"), "--config", str(tmp_path / "config.json"), "--out", str(tmp_path / "out")])
    assert code == ExitCode.INPUT
    assert_one_line_error(capsys.readouterr().err, "config.json is not a JSON file")


def test_an_unreadable_input_file_for_predict_is_an_input_error(tmp_path, capsys):
    (tmp_path / "x.npy").write_text("1, 2, 3")
    assert main(["predict", "cli-mlp", str(tmp_path / "x.npy"), "--url", "http://127.0.0.1:9"]) == ExitCode.INPUT
    assert_one_line_error(capsys.readouterr().err, "x.npy is not a numpy.save (.npy)")
    assert main(["predict", "cli-mlp", str(tmp_path / "x.csv"), "--url", "http://127.0.0.1:9"]) == ExitCode.INPUT
    assert_one_line_error(capsys.readouterr().err, "expected a .pt", ".npy or .npz")


def test_no_server_at_the_url_is_a_network_error():
    url = f"http://127.0.0.1:{free_port()}"
    result = run_cli("status", "anything", "--url", url)
    assert result.returncode == ExitCode.NETWORK
    assert_one_line_error(result.stderr, f"cannot reach an optiserve server at {url}")


def test_a_server_that_never_answers_is_a_network_error(capsys):
    with socket.socket() as silent:  # accepts connections (the kernel does) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        assert main(["models", "--url", url, "--timeout", "0.5"]) == ExitCode.NETWORK
    assert_one_line_error(capsys.readouterr().err, f"{url} did not answer within 0.5 s")


def test_an_error_answer_from_the_server_is_a_server_error(server, capsys):
    assert main(["status", "nobody", "--url", server.url]) == ExitCode.SERVER
    assert_one_line_error(capsys.readouterr().err, "the server answered 404", "nobody")


def test_a_worker_needs_a_shared_store_and_a_shared_store_its_parts(tmp_path, capsys, monkeypatch):
    assert main(["worker", "--store", str(tmp_path / "store")]) == ExitCode.UNEXPECTED
    assert_one_line_error(capsys.readouterr().err, "a worker needs a shared store")
    assert main(["serve", "--store", "postgresql://db.example/optiserve"]) == ExitCode.INPUT
    assert_one_line_error(capsys.readouterr().err, "pass --artifacts s3://bucket/prefix")
    monkeypatch.delenv("OPTISERVE_API_KEY")
    assert main(["worker", "--store", "postgresql://db.example/optiserve", "--artifacts", "s3://models"]) == ExitCode.INPUT
    assert_one_line_error(capsys.readouterr().err, "must share one API key")


def test_a_shared_store_without_the_shared_extra_names_the_extra_to_install(tmp_path):
    # psycopg blocked as if the [shared] extra were not installed; the server must say what to install.
    code = (
        "import sys; sys.modules['psycopg'] = None; from clients.cli import main; "
        "sys.exit(main(['serve', '--store', 'postgresql://db.example/optiserve', '--artifacts', 's3://models']))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == ExitCode.INPUT, result.stderr
    assert_one_line_error(result.stderr, "optiserve[shared]", "psycopg")


def test_usage_errors_keep_argparse_exit_code(capsys):
    assert main(["predict", "cli-mlp"]) == ExitCode.USAGE
    assert main(["models", "--url", "localhost:8000"]) == ExitCode.USAGE
    assert "not an http(s) URL" in capsys.readouterr().err


def test_help_documents_every_exit_code(capsys):
    assert main(["--help"]) == ExitCode.OK
    help_text = capsys.readouterr().out
    for code in ExitCode:
        assert f"\n  {code.value} " in help_text, code


# ---- a closed pipe ----


@pytest.mark.parametrize("command", ["report", "status"])
@pytest.mark.parametrize("unbuffered", ["1", ""], ids=["unbuffered", "buffered"])
def test_a_reader_that_closed_early_ends_the_command_quietly(server, served, command, unbuffered):
    """Unbuffered, print() meets the closed pipe; buffered, the final flush does."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first byte, as with `| head -c0`
    try:
        result = run_cli(command, served, "--json", "--url", server.url, stdout=write_end, env={"PYTHONUNBUFFERED": unbuffered})
    finally:
        os.close(write_end)
    assert result.returncode == ExitCode.CLOSED_PIPE
    assert result.stderr == ""


# ---- progress lines fit the terminal ----


def read_terminal(master: int) -> str:
    chunks = []
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: every writer of the terminal has closed it
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode()


def drawn_lines(terminal_output: str) -> list[str]:
    """What each redraw put on the screen: the text between carriage returns, newlines and erase-line codes."""
    text = terminal_output.replace("\033[K", "\r").replace("\n", "\r")
    return [line for line in text.split("\r") if line]


def test_progress_bar_fits_a_narrow_terminal(monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    master, terminal = pty.openpty()
    with open(terminal, "w") as stream:
        bar = ProgressBar(stream=stream)
        for step in range(5):
            bar.update(f"candidate {step + 1}/5: " + " → ".join(["fold_bn", "prune_structured(0.5)", "int8_dynamic"] * 3), step / 4)
        bar.close()
    lines = drawn_lines(read_terminal(master))
    os.close(master)
    assert len(lines) == 5 and all(len(line) < 80 for line in lines), lines
    assert lines[-1].startswith("[") and "100.0%  candidate 5/5: fold_bn → " in lines[-1] and lines[-1].endswith("…")


def test_optimize_redraws_its_progress_within_80_columns(files, tmp_path):
    long_name = "a candidate whose name alone is wider than the terminal, " * 3
    config = {"candidates": [{"name": long_name, "plan": [{"pass": "freeze"}]}], **FAST_LATENCY}
    (tmp_path / "config.json").write_text(json.dumps(config))
    master, terminal = pty.openpty()
    command = [*CLI, "optimize", str(files / "mlp.pt"), str(files / "calibration.pt"), "--config", str(tmp_path / "config.json"), "--out", str(tmp_path / "out")]
    process = subprocess.Popen(command, cwd=REPO, env=cli_env(COLUMNS="80"), stdout=subprocess.DEVNULL, stderr=terminal)
    os.close(terminal)
    output = read_terminal(master)
    os.close(master)
    assert process.wait(timeout=180) == ExitCode.OK, output
    lines = drawn_lines(output)
    assert any("candidate 1/1: a candidate whose name" in line for line in lines), lines
    assert all(len(line) < 80 for line in lines), lines


# ---- predict, status and delete against a real server ----


@pytest.mark.parametrize("inputs", [
    "x32.npy",
    "x64.npy",
    "x.npz",
    "x.pt",
])
def test_predict_prints_shape_dtype_and_first_values(server, served, files, inputs, capsys):
    assert main(["predict", served, str(files / inputs), "--url", server.url]) == ExitCode.OK
    header, output = capsys.readouterr().out.splitlines()
    first = local_forward(MLP_ARCHIVE, SAMPLE)[0, 0].item()
    assert header.startswith(f"{served} (optimized): ")
    assert output.startswith(f"  output: float32 [3, 4] [{first:.4g}, ")


def test_predict_json_has_every_value(server, served, files, capsys):
    assert main(["predict", served, str(files / "x.pt"), "--variant", "original", "--json", "--url", server.url]) == ExitCode.OK
    answer = json.loads(capsys.readouterr().out)
    assert answer["variant"] == "original" and answer["outputs"]["output"]["dtype"] == "float32"
    torch.testing.assert_close(torch.tensor(answer["outputs"]["output"]["data"]), local_forward(MLP_ARCHIVE, SAMPLE))


def test_predict_saves_outputs_to_npz(server, served, files, tmp_path, capsys):
    out = tmp_path / "outputs.npz"
    assert main(["predict", served, str(files / "x32.npy"), "--out", str(out), "--url", server.url]) == ExitCode.OK
    assert capsys.readouterr().out.startswith(f"wrote output to {out}")
    with numpy.load(out) as saved:
        torch.testing.assert_close(torch.from_numpy(saved["output"]), local_forward(MLP_ARCHIVE, SAMPLE), rtol=1e-4, atol=1e-5)


def test_predict_with_inputs_the_model_rejects_is_a_server_error(server, served, tmp_path, capsys):
    numpy.save(tmp_path / "wrong.npy", numpy.zeros((2, 5), dtype=numpy.float32))
    assert main(["predict", served, str(tmp_path / "wrong.npy"), "--url", server.url]) == ExitCode.SERVER
    assert_one_line_error(capsys.readouterr().err, "the server answered 400")


def test_status_is_a_summary_and_json_on_request(server, served, capsys):
    assert main(["status", served, "--url", server.url]) == ExitCode.OK
    summary = capsys.readouterr().out
    assert f"{served} (id " in summary and ": ready; serves optimized by default" in summary and "  optimization took " in summary
    assert "  variants: original (torchscript, " in summary and "optimized (torchscript, " in summary
    # The tiny MLP's [N, 4] raw output reads as a regression (fidelity.judge_outputs): judged, and shown, by cosine.
    assert "  chosen: freeze, " in summary and "  fidelity: cosine 1.0000" in summary
    assert main(["status", served, "--json", "--url", server.url]) == ExitCode.OK
    status = json.loads(capsys.readouterr().out)
    assert status["name"] == served and status["state"] == "ready" and status["chosen"]["candidate"] == "freeze"


def test_delete_removes_the_model(server, files, capsys):
    url = ["--url", server.url]
    assert main(["upload", str(files / "mlp.pt"), str(files / "calibration.pt"), "--config", str(files / "config.json"), "--name", "cli-temp", "--wait", *url]) == ExitCode.OK
    assert main(["delete", "cli-temp", *url]) == ExitCode.OK
    assert capsys.readouterr().out.endswith("deleted cli-temp\n")
    assert main(["status", "cli-temp", *url]) == ExitCode.SERVER
    assert_one_line_error(capsys.readouterr().err, "404", "cli-temp")
