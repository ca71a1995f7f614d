"""`optiserve` command line: `optimize` runs the pipeline locally; server commands talk HTTP."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .server_commands import add_commands


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="optiserve", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    _add_optimize(commands)
    add_commands(commands)
    args = parser.parse_args(argv)
    return args.handler(args)


def _add_optimize(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "optimize",
        help="optimize a TorchScript model locally and write original.pt, optimized.pt, report.json",
    )
    parser.add_argument("model", type=Path, help="TorchScript archive (torch.jit.save)")
    parser.add_argument("calibration", type=Path, help="calibration batch: torch.save Tensor/tuple/dict, .npy or .npz")
    parser.add_argument("--labels", type=Path, help="int64 class ids, one per calibration sample")
    parser.add_argument("--config", type=Path, help="pipeline config JSON file")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.set_defaults(handler=_optimize)


def _optimize(args: argparse.Namespace) -> int:
    # Imported here so that client-only commands don't pay for importing torch.
    from optimizer_pipeline import OptimizerError, optimize
    from optimizer_pipeline.report_table import format_report

    from .progress import ProgressBar

    config = json.loads(args.config.read_text()) if args.config else None
    bar = ProgressBar()
    try:
        result = optimize(args.model, args.calibration, config=config, labels=args.labels, progress=bar.update)
    except OptimizerError as exc:
        bar.close()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    bar.close()
    written = result.save(args.out)
    print(format_report(result.report))
    print("wrote " + ", ".join(str(path) for path in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
