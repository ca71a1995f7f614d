"""Every direct use of torch.jit and torch.ao.quantization goes through here or through passes/.

torch 2.13 emits a DeprecationWarning on each torch.jit / torch.ao.quantization call; they still work
(shared NOTES). We silence exactly those so users' logs stay readable, and keeping the calls in one
place lets a torch.export backend replace them later.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator

import torch

ScriptModule = torch.jit.ScriptModule


def _ignore_torch_chatter() -> None:
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.(ao|jit|_jit_internal)")
    warnings.filterwarnings("ignore", message=r".*quantize_per_tensor.*")
    # quantize_jit's convert calls model.cpu(), which peeks at .grad of non-leaf tensors.
    warnings.filterwarnings("ignore", message=r".*\.grad attribute of a Tensor that is not a leaf.*")


@contextlib.contextmanager
def quiet_torch() -> Iterator[None]:
    """Suppress torch's deprecation chatter for TorchScript and eager-mode quantization."""
    with warnings.catch_warnings():
        _ignore_torch_chatter()
        yield


def quiet_torch_for_good() -> None:
    """quiet_torch for the rest of the process: for a serving worker, where entering it around
    every forward call (catch_warnings plus five filters) cost more than a small model's forward."""
    _ignore_torch_chatter()


def load_archive(data: bytes | str) -> ScriptModule:
    """Load a TorchScript archive (its bytes, or a file path) on the CPU, in eval mode."""
    with quiet_torch():
        module = torch.jit.load(io.BytesIO(data) if isinstance(data, bytes) else data, map_location="cpu")
    module.eval()
    return module


def archive_bytes(module: ScriptModule) -> bytes:
    """Serialize a ScriptModule to TorchScript archive bytes."""
    buffer = io.BytesIO()
    with quiet_torch():
        torch.jit.save(module, buffer)
    return buffer.getvalue()


def reload(module: ScriptModule) -> ScriptModule:
    """Round-trip through an archive: proves the module saves and loads, and gives an independent copy."""
    return load_archive(archive_bytes(module))


def forward_argument_names(module: ScriptModule) -> list[str]:
    """Names of forward's positional inputs, without self."""
    arguments = module.forward.schema.arguments
    return [a.name for a in arguments[1:]]


def exported_method_names(module: ScriptModule) -> list[str]:
    """Methods other than forward that the archive exports (kept through freeze)."""
    return [name for name in module._c._method_names() if name != "forward" and not name.startswith("__")]
