"""What the pipeline hands back: the original, the optimized variant (unless the original was kept), and the report."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from wire.contract.report import Report, Runtime

from .files import atomic_write_bytes, atomic_write_text

# One stored file per variant; an OpenVINO IR (.xml + .bin) is kept as one archive (runtimes/openvino.py).
FILE_SUFFIX: dict[str, str] = {"torchscript": ".pt", "onnxruntime": ".onnx", "openvino": ".ovir", "exported": ".pt2"}


@dataclass(frozen=True)
class Variant:
    name: str
    runtime: Runtime
    data: bytes

    @property
    def filename(self) -> str:
        return self.name + FILE_SUFFIX[self.runtime]


@dataclass(frozen=True)
class OptimizationResult:
    original: Variant
    # None when no candidate qualified and the original was kept (report.chosen says why).
    optimized: Variant | None
    report: Report
    # Every candidate that built, by report name: for benchmarks and for inspecting runners-up.
    candidates: dict[str, Variant] = field(default_factory=dict)

    @property
    def kept_original(self) -> bool:
        return self.optimized is None

    @property
    def served(self) -> Variant:
        """What to serve: the optimized variant, or the original where it was kept."""
        return self.optimized or self.original

    def save(self, directory: str | Path) -> list[Path]:
        """Write original.pt, optimized.pt (or .onnx; none where the original was kept), report.json and
        report.html, each atomically."""
        from .report.html import render_html  # the HTML renderer needs the config; keep this module light
        directory = Path(directory)
        written = []
        for variant in (self.original, self.optimized) if self.optimized else (self.original,):
            path = directory / variant.filename
            atomic_write_bytes(path, variant.data)
            written.append(path)
        report_path = directory / "report.json"
        atomic_write_text(report_path, self.report.model_dump_json(indent=2))
        html_path = directory / "report.html"
        atomic_write_text(html_path, render_html(self.report))
        written += [report_path, html_path]
        return written
