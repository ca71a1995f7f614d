"""A one-line progress bar on stderr that redraws in place on a terminal and logs lines elsewhere."""

from __future__ import annotations

import sys


class ProgressBar:
    def __init__(self, width: int = 30, stream=None) -> None:
        self.width = width
        self.stream = stream or sys.stderr
        self.interactive = self.stream.isatty()
        self._last = ""

    def update(self, stage: str, fraction: float) -> None:
        fraction = min(max(fraction, 0.0), 1.0)
        filled = int(round(self.width * fraction))
        line = f"[{'#' * filled}{'.' * (self.width - filled)}] {fraction * 100:5.1f}%  {stage}"
        if line == self._last:
            return
        self._last = line
        if self.interactive:
            self.stream.write("\r\033[K" + line[:200])
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.interactive and self._last:
            self.stream.write("\n")
            self.stream.flush()
