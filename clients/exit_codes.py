"""Exit codes of the `optiserve` command line, one per class of error, so that scripts can tell them apart.

exit codes:
  0    ok           the command did what it was asked
  1    unexpected   a bug in optiserve (OPTISERVE_DEBUG=1 shows its traceback), or `serve` or `worker` could not start
                    (`serve`, `worker` and `optimize` need the server installed, not the client alone)
  2    usage        unknown command or flag, a missing or malformed argument (argparse)
  3    input        a local file is missing or unreadable, or is not a valid model, calibration batch,
                    labels, config, settings or input tensor file
  4    server       the server answered with an error (HTTP 4xx or 5xx); the message is the server's
  5    network      no server answers at --url, or it did not answer within --timeout
  130  interrupted  Ctrl-C
  141  closed pipe  the reader of stdout went away early (e.g. `| head`); nothing more is printed
"""

from __future__ import annotations

import signal
from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    UNEXPECTED = 1
    USAGE = 2
    INPUT = 3
    SERVER = 4
    NETWORK = 5
    # 128 + signal number: what a shell reports for a process that the signal ended.
    INTERRUPTED = 128 + signal.SIGINT
    CLOSED_PIPE = 128 + signal.SIGPIPE


# The docstring's table is the one description of the codes; --help shows it as it is.
HELP_EPILOG = __doc__[__doc__.index("exit codes:") :]
