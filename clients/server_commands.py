"""`optiserve serve | worker | upload | models | status | report | predict | delete`: run the server or a job worker, or talk to a server over HTTP."""

from __future__ import annotations

import argparse
import importlib
import os
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from urllib.parse import urlsplit

import requests

from wire.report_text.table import format_report

from .cli_errors import CliError, reporting_errors
from .client import OptiserveClient, OptiserveError
from .exit_codes import ExitCode
from .status_summary import status_summary
from .tensor_files import describe_prediction, prediction_json, read_inputs, save_outputs

DEFAULT_URL = os.environ.get("OPTISERVE_URL", "http://127.0.0.1:8000")
DEFAULT_TIMEOUT_S = 60.0
SERVER_COMMANDS = {
    "serve": "run the optiserve server (LitServe) on a model store (--no-jobs: serve only)",
    "worker": "run optimization jobs only, from a shared store (postgresql:// + s3://)",
}
# The server distribution's packages: the client distribution (clients/pyproject.toml) has neither.
SERVER_PACKAGES = ("server", "optimizer_pipeline")
# As README.md's quick start installs it; the server distribution is not on PyPI.
SERVER_INSTALL = 'in a checkout of optiserve, pip install "torch==2.13.0" && pip install -e ./clients -e .'

ClientHandler = Callable[[argparse.Namespace, OptiserveClient], int]


def add_commands(commands: argparse._SubParsersAction) -> None:
    _add_serve(commands)
    upload = client_parser(commands, "upload", "upload a model; optimization starts in the background", _upload)
    upload.add_argument("model", type=Path, help="TorchScript archive (torch.jit.save) or torch.export program (.pt2)")
    upload.add_argument("calibration", type=Path, help="calibration batch: torch.save Tensor/tuple/dict, .npy or .npz")
    upload.add_argument("--labels", type=Path, help="int64 class ids, one per calibration sample")
    upload.add_argument("--unlabeled", type=Path, help="more inputs in the calibration batch's layout, without labels (distillation, certification)")
    upload.add_argument("--config", type=Path, help="pipeline config JSON file")
    upload.add_argument("--name", help="[a-z0-9._-], at most 64 (default: from the file name)")
    upload.add_argument("--replace", action="store_true", help="replace the model that has this name")
    upload.add_argument("--wait", action="store_true", help="wait for the optimization, with a progress bar")
    client_parser(commands, "models", "list the server's models", _models)
    status = client_parser(commands, "status", "show one model's state, variants and chosen candidate", _status)
    status.add_argument("model_id", help="model id or name")
    status.add_argument("--json", action="store_true", help="print the server's status JSON")
    report = client_parser(commands, "report", "show a model's optimization report", _report)
    report.add_argument("model_id", help="model id or name")
    report.add_argument("--json", action="store_true", help="print the report as JSON")
    predict = client_parser(commands, "predict", "run a model on inputs from a file; print or save its outputs", _predict)
    predict.add_argument("model_id", help="model id or name")
    predict.add_argument("inputs", type=Path, metavar="FILE",
                         help="one input per model input: .pt (torch.save of a tensor or tuple of tensors), .npy, or .npz (arrays in saved order)")
    predict.add_argument("--variant", choices=("original", "optimized"), help="default: the one the server serves")
    shown = predict.add_mutually_exclusive_group()
    shown.add_argument("--json", action="store_true", help="print every output in full as JSON")
    shown.add_argument("--out", type=Path, help="save the outputs to this .npz file, one array per output name")
    delete = client_parser(commands, "delete", "delete a model, its variants and its report", _delete)
    delete.add_argument("model_id", help="model id or name")


def _add_serve(commands: argparse._SubParsersAction) -> None:
    for name, help_text in SERVER_COMMANDS.items():
        # The server's flags are its settings and are parsed by the handler (server_arguments): the
        # client commands never import the server, and `serve` without it installed says what to
        # install. prefix_chars="+" lets every --flag through to `server_flags` untouched (argparse
        # otherwise takes a leading --flag for an option of this parser, unknown to it).
        parser = commands.add_parser(name, help=help_text, add_help=False, prefix_chars="+")
        parser.add_argument("server_flags", nargs=argparse.REMAINDER)
        parser.set_defaults(handler=reporting_errors(lambda args, name=name: _run(name, args.server_flags)))


def server_arguments(command: str, flags: list[str]) -> argparse.Namespace:
    """`optiserve serve|worker FLAGS` parsed with the server's flags (--store, --workers, ...; --help)."""
    add_serve_arguments = import_server_part("server.main", command).add_serve_arguments
    parser = argparse.ArgumentParser(prog=f"optiserve {command}", description=SERVER_COMMANDS[command])
    add_serve_arguments(parser)
    return parser.parse_args(flags)


def import_server_part(module: str, command: str) -> ModuleType:
    """A module of the server distribution, for `optiserve <command>`; without it, an error that says what to install."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in SERVER_PACKAGES:
            raise
        raise CliError(
            ExitCode.UNEXPECTED,
            f"optiserve {command} needs the server, which is not installed here (only the optiserve-client distribution is): {SERVER_INSTALL}",
        ) from exc


def _run(command: str, flags: list[str]) -> int:
    from pydantic import ValidationError

    args = server_arguments(command, flags)
    from server.main import COMMANDS, settings_from_args

    try:
        settings = settings_from_args(args)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise CliError(ExitCode.INPUT, f"invalid server setting (flag or OPTISERVE_* variable): {problems}") from exc
    return COMMANDS[command](settings)


def client_parser(commands: argparse._SubParsersAction, name: str, help_text: str, handler: ClientHandler) -> argparse.ArgumentParser:
    parser = commands.add_parser(name, help=help_text)
    parser.add_argument("--url", type=_server_url, default=DEFAULT_URL, help=f"server URL (env OPTISERVE_URL; default {DEFAULT_URL})")
    parser.add_argument("--timeout", type=_seconds, default=DEFAULT_TIMEOUT_S, help=f"seconds to wait for each answer (default {DEFAULT_TIMEOUT_S:g})")
    parser.set_defaults(handler=reporting_errors(lambda args: _with_client(args, handler)))
    return parser


def _server_url(text: str) -> str:
    # Checked here so that a typo is a usage error, not a confusing failure inside requests.
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise argparse.ArgumentTypeError(f"{text!r} is not an http(s) URL such as http://127.0.0.1:8000")
    return text


def _seconds(text: str) -> float:
    seconds = float(text)
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number of seconds")
    return seconds


def _with_client(args: argparse.Namespace, handler: ClientHandler) -> int:
    """Run a command against the server; its failures become server or network errors."""
    try:
        return handler(args, OptiserveClient(args.url, timeout=args.timeout))
    except OptiserveError as exc:
        raise CliError(ExitCode.SERVER, f"the server answered {exc}") from exc
    # Timeout first: a connect timeout is both a Timeout and a ConnectionError.
    except requests.Timeout as exc:
        raise CliError(ExitCode.NETWORK, f"{args.url} did not answer within {args.timeout:g} s (a busy server or a slow model: try a larger --timeout)") from exc
    except requests.ConnectionError as exc:
        raise CliError(ExitCode.NETWORK, f"cannot reach an optiserve server at {args.url} (start one with `optiserve serve`, or point --url / OPTISERVE_URL at one)") from exc
    except requests.RequestException as exc:
        raise CliError(ExitCode.NETWORK, f"talking to {args.url} failed: {exc}") from exc


def _upload(args: argparse.Namespace, client: OptiserveClient) -> int:
    accepted = client.upload(
        args.model, args.calibration, labels=args.labels, config=args.config, name=args.name, replace=args.replace, unlabeled=args.unlabeled
    )
    print(f"uploaded {accepted.name} (id {accepted.id}); the original serves now; status: {args.url}{accepted.status_url}")
    if args.wait:
        print(status_summary(client.wait(accepted.id)))
    return ExitCode.OK


def _models(args: argparse.Namespace, client: OptiserveClient) -> int:
    rows = [("NAME", "ID", "STATE", "SERVES", "SPEED-UP")]
    for model in client.models():
        speedup = f"{model.chosen.speedup:.2f}x" if model.chosen and model.chosen.speedup else "-"
        rows.append((model.name, model.id, model.state, model.default_variant, speedup))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return ExitCode.OK


def _status(args: argparse.Namespace, client: OptiserveClient) -> int:
    model = client.model(args.model_id)
    print(model.model_dump_json(indent=2) if args.json else status_summary(model))
    return ExitCode.OK


def _report(args: argparse.Namespace, client: OptiserveClient) -> int:
    report = client.report(args.model_id)
    print(report.model_dump_json(indent=2) if args.json else format_report(report))
    return ExitCode.OK


def _predict(args: argparse.Namespace, client: OptiserveClient) -> int:
    prediction = client.predict(args.model_id, *read_inputs(args.inputs), variant=args.variant)
    if args.out:
        save_outputs(prediction, args.out)
        print(f"wrote {', '.join(prediction.outputs)} to {args.out} ({prediction.model}, {prediction.variant})")
    else:
        print(prediction_json(prediction) if args.json else describe_prediction(prediction))
    return ExitCode.OK


def _delete(args: argparse.Namespace, client: OptiserveClient) -> int:
    client.delete(args.model_id)
    print(f"deleted {args.model_id}")
    return ExitCode.OK
