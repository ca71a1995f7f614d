"""`optiserve` command line: `optimize` runs the pipeline locally; server commands talk HTTP."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from wire.report_text.table import format_report

from .cli_errors import CliError, reporting_errors
from .exit_codes import HELP_EPILOG, ExitCode
from .routing_commands import add_routing_commands
from .server_commands import add_commands, import_server_part


def main(argv: list[str] | None = None) -> int:
    """Run one command and return its exit code (clients.exit_codes)."""
    try:
        try:
            args = build_parser().parse_args(argv)
            code = args.handler(args)
        except SystemExit as stop:  # argparse, after --help or a usage error
            code = stop.code
        # Piped output is block-buffered: a reader that left early shows up here rather than in print().
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        _discard_stdout()
        return ExitCode.CLOSED_PIPE
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="optiserve", description=__doc__, epilog=HELP_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    _add_optimize(commands)
    add_commands(commands)
    add_routing_commands(commands)
    return parser


def _add_optimize(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "optimize",
        help="optimize a model locally and write original.pt (or .pt2), report.json and, when a candidate qualifies, optimized.pt (or .onnx, .ovir)",
    )
    parser.add_argument("model", type=Path, help="TorchScript archive (torch.jit.save) or torch.export program (torch.export.save, .pt2)")
    parser.add_argument("calibration", type=Path, help="calibration batch: torch.save Tensor/tuple/dict, .npy or .npz")
    parser.add_argument("--labels", type=Path, help="int64 class ids, one per calibration sample")
    parser.add_argument(
        "--unlabeled", type=Path, help="more inputs in the calibration batch's layout, without labels: distillation, reconstruction, certification"
    )
    parser.add_argument("--config", type=Path, help="pipeline config JSON file")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.set_defaults(handler=reporting_errors(_optimize))


def _optimize(args: argparse.Namespace) -> int:
    # Imported here so that client-only commands don't pay for importing torch; the client
    # distribution has no pipeline, and then says what to install.
    import_server_part("optimizer_pipeline", "optimize")
    from optimizer_pipeline import OptimizerError, optimize

    from .progress import ProgressBar

    config = _read_config(args.config) if args.config else None
    with ProgressBar() as bar:
        try:
            result = optimize(
                args.model, args.calibration, config=config, labels=args.labels, progress=bar.update, unlabeled=args.unlabeled
            )
        except OptimizerError as exc:
            raise CliError(ExitCode.INPUT, str(exc)) from exc
    written = result.save(args.out)
    print(format_report(result.report))
    print("wrote " + ", ".join(str(path) for path in written))
    return ExitCode.OK


def _read_config(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CliError(ExitCode.INPUT, f"{path} is not a JSON file: {exc}") from exc


def _discard_stdout() -> None:
    # Python flushes stdout once more at exit; with the pipe gone that flush would fail and print
    # "Exception ignored ... BrokenPipeError". /dev/null takes whatever is still buffered.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


if __name__ == "__main__":
    sys.exit(main())
