"""Turn whatever a command raises into one `error: ...` line on stderr and the exit code of its class."""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable

from .exit_codes import ExitCode

Handler = Callable[[argparse.Namespace], int]


class CliError(Exception):
    """A failure the user can fix; the message says how."""

    def __init__(self, exit_code: ExitCode, message: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def reporting_errors(handler: Handler) -> Handler:
    """Wrap a command handler so that no traceback reaches the user.

    A closed pipe and Ctrl-C pass through: `cli.main` ends those quietly, wherever they happen."""

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except (BrokenPipeError, KeyboardInterrupt):
            raise
        except CliError as exc:
            return _report(exc.exit_code, str(exc))
        except OSError as exc:
            # Local files: the file name and the system's reason are what the user needs to fix it.
            return _report(ExitCode.INPUT, f"{exc.filename}: {exc.strerror}" if exc.filename else str(exc))
        except Exception as exc:
            if os.environ.get("OPTISERVE_DEBUG"):
                raise
            return _report(
                ExitCode.UNEXPECTED,
                f"unexpected {type(exc).__name__}: {exc} (a bug in optiserve: please report it; OPTISERVE_DEBUG=1 shows the traceback)",
            )

    return run


def _one_line(text: str) -> str:
    """Messages from TorchScript and the server can span lines; an error is one line."""
    return " ".join(text.split())


def _report(exit_code: ExitCode, message: str) -> int:
    print(f"error: {_one_line(message)}", file=sys.stderr)
    return exit_code
