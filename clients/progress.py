"""A one-line progress bar on stderr that redraws in place on a terminal and logs lines elsewhere."""

from __future__ import annotations

import shutil
import sys
from typing import TextIO


class ProgressBar:
    def __init__(self, width: int = 30, stream: TextIO | None = None) -> None:
        self.width = width
        self.stream = stream or sys.stderr
        self.interactive = self.stream.isatty()
        self._last = ""

    def update(self, stage: str, fraction: float) -> None:
        fraction = min(max(fraction, 0.0), 1.0)
        if self.interactive:
            line = fit_progress_line(stage, fraction, self.width, shutil.get_terminal_size().columns)
        else:
            line = progress_line(stage, fraction, self.width)
        if line == self._last:
            return
        self._last = line
        if self.interactive:
            self.stream.write("\r\033[K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        """Keep the last line on screen."""
        if self.interactive and self._last:
            self.stream.write("\n")
            self.stream.flush()

    def erase(self) -> None:
        """Take the bar off the screen, so that an error printed next stands on its own line."""
        if self.interactive and self._last:
            self.stream.write("\r\033[K")
            self.stream.flush()

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.erase()


def progress_line(stage: str, fraction: float, bar_width: int) -> str:
    filled = int(round(bar_width * fraction))
    return f"[{'#' * filled}{'.' * (bar_width - filled)}] {fraction * 100:5.1f}%  {stage}"


def fit_progress_line(stage: str, fraction: float, bar_width: int, columns: int) -> str:
    """The progress line in fewer than `columns` characters.

    `\\r` only returns to the start of the last screen row, so a line that wraps leaves its first rows
    behind on every redraw. The last column stays empty too: some terminals wrap as soon as it is written."""
    room = max(columns - 1, 1)
    # The bar gives up width before the stage text does: the percentage already says how far along it is.
    line = progress_line(stage, fraction, min(bar_width, room // 3))
    return line if len(line) <= room else line[: room - 1] + "…"
