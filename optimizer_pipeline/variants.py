"""What the pipeline hands back: the original and the optimized variant, with the report."""

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
    optimized: Variant
    report: Report
    # Every candidate that built, by report name: for benchmarks and for inspecting runners-up.
    candidates: dict[str, Variant] = field(default_factory=dict)

    def save(self, directory: str | Path) -> list[Path]:
        """Write original.pt, optimized.pt (or .onnx), report.json and report.html, each atomically."""
        from .report.html import render_html  # only when saving: loading a variant needs no page renderer
        directory = Path(directory)
        written = []
        for variant in (self.original, self.optimized):
            path = directory / variant.filename
            atomic_write_bytes(path, variant.data)
            written.append(path)
        report_path = directory / "report.json"
        atomic_write_text(report_path, self.report.model_dump_json(indent=2))
        html_path = directory / "report.html"
        atomic_write_text(html_path, render_html(self.report))
        written += [report_path, html_path]
        return written
