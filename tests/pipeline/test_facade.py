"""The pipeline's facade: every name it offers resolves, and reading a config imports no runtime."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optimizer_pipeline

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("onnx", "onnxruntime", "openvino", "nncf")


def test_every_facade_name_resolves():
    assert all(getattr(optimizer_pipeline, name) is not None for name in optimizer_pipeline.__all__)


def test_reading_a_config_imports_no_runtime():
    # A fresh interpreter: this one has imported everything already.
    code = (
        "import sys, optimizer_pipeline; from optimizer_pipeline import PipelineConfig, read_stored_config; "
        "PipelineConfig.model_validate({'plan': [{'pass': 'prune_unstructured'}, {'pass': 'finetune'}], 'threads': 2}); "
        "read_stored_config({'plan': [{'pass': 'freeze'}]}); "
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_openvino_and_nncf_send_no_telemetry():
    # A fresh interpreter, as a job has: NNCF turns its telemetry off by itself under pytest only.
    code = (
        "import sys, threading, optimizer_pipeline, torch, openvino, nncf; "
        "from optimizer_pipeline.intake.calibration import Batch; "
        "from optimizer_pipeline.passes import parse_pass_spec, run_pass; "
        "model = torch.jit.trace(torch.nn.Linear(4, 2).eval(), torch.zeros(2, 4)); "
        "run_pass(model, Batch(inputs=(torch.randn(8, 4),)), parse_pass_spec({'pass': 'ov_convert'})); "
        "print(sys.modules.get('openvino_telemetry'), [t.name for t in threading.enumerate() if t is not threading.main_thread()])"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    # No telemetry module, so no thread that forks a process to post a report.
    assert done.stdout.strip().splitlines()[-1] == "None []"
