"""`optiserve serve | upload | models | status | report`: run the server, or talk to one over HTTP."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import requests

from .client import OptiserveClient, OptiserveError
from .models import ModelStatus

DEFAULT_URL = os.environ.get("OPTISERVE_URL", "http://127.0.0.1:8000")


def add_commands(commands: argparse._SubParsersAction) -> None:
    _add_serve(commands)
    upload = _client_parser(commands, "upload", "upload a model; optimization starts in the background", _upload)
    upload.add_argument("model", type=Path, help="TorchScript archive (torch.jit.save)")
    upload.add_argument("calibration", type=Path, help="calibration batch: torch.save Tensor/tuple/dict, .npy or .npz")
    upload.add_argument("--labels", type=Path, help="int64 class ids, one per calibration sample")
    upload.add_argument("--config", type=Path, help="pipeline config JSON file")
    upload.add_argument("--name", help="[a-z0-9._-], at most 64 (default: from the file name)")
    upload.add_argument("--replace", action="store_true", help="replace the model that has this name")
    upload.add_argument("--wait", action="store_true", help="wait for the optimization, with a progress bar")
    _client_parser(commands, "models", "list the server's models", _models)
    status = _client_parser(commands, "status", "show one model's state, variants and chosen candidate", _status)
    status.add_argument("model_id", help="model id or name")
    report = _client_parser(commands, "report", "show a model's optimization report", _report)
    report.add_argument("model_id", help="model id or name")
    report.add_argument("--json", action="store_true", help="print the report as JSON")


def _add_serve(commands: argparse._SubParsersAction) -> None:
    from server.main import add_serve_arguments

    parser = commands.add_parser("serve", help="run the optiserve server (LitServe) on a local model store")
    add_serve_arguments(parser)
    parser.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    from server.main import serve, settings_from_args

    return serve(settings_from_args(args))


def _client_parser(commands: argparse._SubParsersAction, name: str, help_text: str, handler: Callable[[argparse.Namespace, OptiserveClient], int]) -> argparse.ArgumentParser:
    parser = commands.add_parser(name, help=help_text)
    parser.add_argument("--url", default=DEFAULT_URL, help=f"server URL (env OPTISERVE_URL; default {DEFAULT_URL})")
    parser.set_defaults(handler=lambda args: _with_client(args, handler))
    return parser


def _with_client(args: argparse.Namespace, handler: Callable[[argparse.Namespace, OptiserveClient], int]) -> int:
    try:
        return handler(args, OptiserveClient(args.url))
    except OptiserveError as exc:
        print(f"error: {exc.status}: {exc.message}", file=sys.stderr)
        return 1
    except requests.ConnectionError:
        print(f"error: cannot reach an optiserve server at {args.url} (start one with `optiserve serve`)", file=sys.stderr)
        return 1


def _upload(args: argparse.Namespace, client: OptiserveClient) -> int:
    accepted = client.upload(args.model, args.calibration, labels=args.labels, config=args.config, name=args.name, replace=args.replace)
    print(f"uploaded {accepted.name} (id {accepted.id}); the original serves now; status: {args.url}{accepted.status_url}")
    if args.wait:
        _print_status(client.wait(accepted.id))
    return 0


def _models(args: argparse.Namespace, client: OptiserveClient) -> int:
    rows = [("NAME", "ID", "STATE", "SERVES", "SPEED-UP")]
    for model in client.models():
        speedup = f"{model.chosen.speedup:.2f}x" if model.chosen and model.chosen.speedup else "-"
        rows.append((model.name, model.id, model.state, model.default_variant, speedup))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return 0


def _status(args: argparse.Namespace, client: OptiserveClient) -> int:
    _print_status(client.model(args.model_id))
    return 0


def _report(args: argparse.Namespace, client: OptiserveClient) -> int:
    report = client.report(args.model_id)
    if args.json:
        print(report.model_dump_json(indent=2))
    else:
        from optimizer_pipeline.report_table import format_report

        print(format_report(report))
    return 0


def _print_status(model: ModelStatus) -> None:
    progress = f" ({model.stage}, {model.progress:.0%})" if model.state == "optimizing" else ""
    print(f"{model.name} (id {model.id}): {model.state}{progress}; serves {model.default_variant} by default")
    for variant in model.variants:
        print(f"  {variant.name}: {variant.runtime}, {variant.size_bytes} bytes")
    if model.chosen is not None:
        print(f"  chosen: {model.chosen.candidate}: {model.chosen.reason}")
        if model.chosen.fidelity is not None:
            print("  fidelity: " + json.dumps(model.chosen.fidelity.model_dump(exclude_none=True)))
    if model.error:
        print(f"  optimization failed: {model.error}")
