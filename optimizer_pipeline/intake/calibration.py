"""Calibration batches: reading the upload formats, and splitting deterministically.

A batch is one tensor per positional model input, all sharing the first (batch) dimension, plus
optional int64 labels. Files are read without unpickling arbitrary objects: torch.load with
weights_only=True, numpy with allow_pickle=False.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import InvalidCalibrationError, InvalidLabelsError, InvalidUnlabeledError
from ..fidelity.outputs import NamedOutputs

NPY_MAGIC = b"\x93NUMPY"


@dataclass(frozen=True)
class Batch:
    inputs: tuple[torch.Tensor, ...]
    labels: torch.Tensor | None = None
    # The original model's outputs on these inputs: the teacher for distillation passes.
    teacher_outputs: NamedOutputs | None = None
    # The original model itself, for distillation on inputs made from these (augmentation).
    teacher: torch.jit.ScriptModule | None = None
    # More inputs in this layout, without labels (the upload's unlabeled set, with the teacher's
    # outputs). Only passes that fit weights read them (`for_fitting`); quantizers calibrate on the
    # samples above alone, and a sub-batch (take, head, split) does not carry them.
    unlabeled: Batch | None = None

    def __len__(self) -> int:
        return int(self.inputs[0].shape[0])

    def take(self, index: torch.Tensor | Sequence[int]) -> Batch:
        index = torch.as_tensor(index, dtype=torch.long)
        labels = None if self.labels is None else self.labels[index]
        teacher = None if self.teacher_outputs is None else [(n, t[index]) for n, t in self.teacher_outputs]
        return Batch(tuple(t[index] for t in self.inputs), labels, teacher, self.teacher)

    def head(self, count: int) -> Batch:
        """The first `count` samples, cycling through the batch if it is shorter."""
        index = torch.arange(count) % len(self)
        return self.take(index)

    def chunks(self, size: int) -> Iterator[Batch]:
        for start in range(0, len(self), size):
            yield self.take(torch.arange(start, min(start + size, len(self))))

    def split(self, holdout_fraction: float, seed: int = 0) -> tuple[Batch, Batch]:
        """(train, held_out): a seeded permutation, so the same upload always splits the same way."""
        n = len(self)
        held = min(n - 1, max(1, round(n * holdout_fraction)))
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        return self.take(order[held:]), self.take(order[:held])

    def for_fitting(self, limit: int | None = None) -> Batch:
        """These samples followed by the unlabeled ones (at most `limit` in all): what distillation,
        reconstruction and sensitivity fit on. Unlabeled samples carry the label IGNORE_LABEL."""
        extra = self.unlabeled
        if extra is None or (limit is not None and limit <= len(self)):
            return self if limit is None or limit >= len(self) else self.head(limit)
        if limit is not None:
            extra = extra.take(torch.arange(min(len(extra), limit - len(self))))
        return concat(self, extra)

    def describe(self) -> str:
        return ", ".join(f"{tuple(t.shape)} {str(t.dtype).removeprefix('torch.')}" for t in self.inputs)


IGNORE_LABEL = -100  # a sample without a label (cross_entropy's default ignore_index)


def concat(first: Batch, second: Batch) -> Batch:
    """Both batches' samples in one (the teacher and the unlabeled set of `first` are kept)."""
    labels = None
    if first.labels is not None or second.labels is not None:
        labels = torch.cat([_labels_or_ignored(first), _labels_or_ignored(second)])
    teacher = None
    if first.teacher_outputs is not None and second.teacher_outputs is not None:
        teacher = [(n, torch.cat([a, b])) for (n, a), (_, b) in zip(first.teacher_outputs, second.teacher_outputs)]
    inputs = tuple(torch.cat([a, b]) for a, b in zip(first.inputs, second.inputs))
    return Batch(inputs, labels, teacher, first.teacher)


def _labels_or_ignored(batch: Batch) -> torch.Tensor:
    return batch.labels if batch.labels is not None else torch.full((len(batch),), IGNORE_LABEL, dtype=torch.int64)


def load_unlabeled(source: bytes | str | Path, input_names: Sequence[str], like: Batch) -> Batch:
    """Read the unlabeled set (the calibration file formats) and check it has the calibration batch's
    layout: the same inputs, each with the same per-sample shape and dtype. Any number of samples."""
    value = _load_mapped(source)
    if value is None:
        value = _load_any(_read(source), what="unlabeled")
    try:
        inputs = _as_inputs(value, list(input_names), min_samples=1)
    except InvalidCalibrationError as exc:
        raise InvalidUnlabeledError(f"unlabeled set: {exc}") from None
    check_same_layout(inputs, like.inputs)
    return Batch(inputs)


def check_same_layout(inputs: Sequence[torch.Tensor], calibration: Sequence[torch.Tensor]) -> None:
    """Raise InvalidUnlabeledError naming the first input whose per-sample shape or dtype differs."""
    for position, (tensor, expected) in enumerate(zip(inputs, calibration)):
        if tuple(tensor.shape[1:]) != tuple(expected.shape[1:]) or tensor.dtype != expected.dtype:
            raise InvalidUnlabeledError(
                f"the unlabeled set's input {position} has per-sample shape {list(tensor.shape[1:])} and dtype "
                f"{str(tensor.dtype).removeprefix('torch.')}, but the calibration batch's has "
                f"{list(expected.shape[1:])} and {str(expected.dtype).removeprefix('torch.')}; give inputs in the "
                f"calibration batch's layout (any number of samples along the first dimension)"
            )


def _load_mapped(source: bytes | str | Path):
    """A torch.save file read through mmap (None for bytes, numpy files or the legacy format): an
    unlabeled set may be larger than the memory a validation or a job may map twice over."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return None
    path = Path(source)
    if not zipfile.is_zipfile(path):
        return None
    with zipfile.ZipFile(path) as archive:
        if all(name.endswith(".npy") for name in archive.namelist()):
            return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return None  # read whole below, where the error says what is wrong


def load_calibration(source: bytes | str | Path, input_names: Sequence[str]) -> Batch:
    """Read a calibration file (torch.save of Tensor / tuple / list / dict, or .npy / .npz).

    `input_names` are the model's forward argument names: dict entries are matched to them.
    """
    return Batch(_as_inputs(_load_any(_read(source), what="calibration"), list(input_names)))


def _load_any(data: bytes, what: str):
    """A .npy, a .npz or a torch.save file, told apart by content."""
    if data.startswith(NPY_MAGIC):
        return _load_npy(data)
    if _is_npz(data):
        return _load_npz(data)
    return _load_torch(data, what=what)


def load_labels(source: bytes | str | Path, batch_size: int) -> torch.Tensor:
    """Read int class ids, one per calibration sample."""
    data = _read(source)
    try:
        if data.startswith(NPY_MAGIC):
            value = _load_npy(data, float64_to_32=False)
        else:
            value = _load_torch(data, what="labels")
    except InvalidCalibrationError as exc:
        raise InvalidLabelsError(str(exc)) from None
    if isinstance(value, (list, tuple)) and all(isinstance(v, int) for v in value):
        value = torch.tensor(value)
    if not isinstance(value, torch.Tensor):
        raise InvalidLabelsError(f"labels must be a 1-D integer tensor of class ids, got {type(value).__name__}")
    if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
        raise InvalidLabelsError(f"labels must be integer class ids (int64), got dtype {value.dtype}")
    if value.dim() != 1:
        raise InvalidLabelsError(f"labels must be 1-D (one class id per sample), got shape {tuple(value.shape)}")
    if value.shape[0] != batch_size:
        raise InvalidLabelsError(
            f"got {value.shape[0]} labels for a calibration batch of {batch_size} samples; give one label per sample"
        )
    if (value < 0).any():
        raise InvalidLabelsError("labels must be non-negative class ids")
    return value.to(torch.int64)


def check_labels_fit(labels: torch.Tensor, class_count: int, output_name: str) -> None:
    """Labels are indices into the model's class scores: each must be in [0, class_count)."""
    largest = int(labels.max())
    if largest >= class_count:
        raise InvalidLabelsError(
            f"label {largest} is out of range: the model's output {output_name!r} scores {class_count} classes, so "
            f"labels must be class ids from 0 to {class_count - 1}; check that the labels belong to this model and "
            f"are 0-based"
        )


def _read(source: bytes | str | Path) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    return Path(source).read_bytes()


def _is_npz(data: bytes) -> bool:
    if not zipfile.is_zipfile(io.BytesIO(data)):
        return False
    names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    return bool(names) and all(name.endswith(".npy") for name in names)


def _load_npy(data: bytes, float64_to_32: bool = True) -> torch.Tensor:
    import numpy as np

    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as exc:
        raise InvalidCalibrationError(f"could not read the .npy file: {exc}") from None
    return _from_numpy(array, float64_to_32)


def _load_npz(data: bytes) -> dict[str, torch.Tensor]:
    import numpy as np

    try:
        archive = np.load(io.BytesIO(data), allow_pickle=False)
        return {name: _from_numpy(archive[name], True) for name in archive.files}
    except InvalidCalibrationError:
        raise
    except Exception as exc:
        raise InvalidCalibrationError(f"could not read the .npz file: {exc}") from None


def _from_numpy(array, float64_to_32: bool) -> torch.Tensor:
    if array.dtype.kind not in "biuf":
        raise InvalidCalibrationError(f"numpy arrays must be numeric, got dtype {array.dtype}")
    tensor = torch.from_numpy(array.copy())
    # numpy defaults to float64, which almost no model takes; cast rather than fail on a dtype mismatch.
    if float64_to_32 and tensor.dtype == torch.float64:
        tensor = tensor.float()
    return tensor


def _load_torch(data: bytes, what: str):
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidCalibrationError(
            f"could not read the {what} file ({first_line[:200]}). Write it with torch.save(tensor, path) "
            f"holding a Tensor, a tuple/list of Tensors or a dict of Tensors (or use numpy .npy/.npz); "
            f"arbitrary pickled objects are refused"
        ) from None


def _as_inputs(value, input_names: list[str], min_samples: int = 2) -> tuple[torch.Tensor, ...]:
    if isinstance(value, torch.Tensor):
        tensors = [value]
    elif isinstance(value, (list, tuple)):
        tensors = list(value)
    elif isinstance(value, dict):
        missing = [name for name in input_names if name not in value]
        extra = [name for name in value if name not in input_names]
        if missing or extra:
            raise InvalidCalibrationError(
                f"calibration dict keys {sorted(value)} do not match the model's forward arguments "
                f"{input_names}" + (f"; missing {missing}" if missing else "") + (f"; unexpected {extra}" if extra else "")
            )
        tensors = [value[name] for name in input_names]
    else:
        raise InvalidCalibrationError(
            f"calibration must be a Tensor, a tuple/list of Tensors or a dict of Tensors, got {type(value).__name__}"
        )
    if not tensors:
        raise InvalidCalibrationError("calibration holds no tensors")
    for position, tensor in enumerate(tensors):
        if not isinstance(tensor, torch.Tensor):
            raise InvalidCalibrationError(f"calibration input {position} is a {type(tensor).__name__}, not a Tensor")
        if tensor.dim() == 0:
            raise InvalidCalibrationError(f"calibration input {position} is a scalar; the first dimension must be the batch")
    if len(tensors) != len(input_names):
        raise InvalidCalibrationError(
            f"the model's forward takes {len(input_names)} input(s) {input_names}, but the calibration file holds "
            f"{len(tensors)} tensor(s); give one tensor per input (a tuple in positional order, or a dict by name)"
        )
    sizes = {int(t.shape[0]) for t in tensors}
    if len(sizes) != 1:
        shapes = [tuple(t.shape) for t in tensors]
        raise InvalidCalibrationError(f"calibration inputs disagree on the batch size (first dimension): {shapes}")
    if sizes.pop() < min_samples:
        if min_samples == 1:
            raise InvalidCalibrationError("it holds no samples (the first dimension is 0)")
        raise InvalidCalibrationError(
            "the calibration batch needs at least 2 samples (first dimension); more is better: part is held out "
            "to measure fidelity, and quantization calibrates on the rest"
        )
    for position, tensor in enumerate(tensors):
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise InvalidCalibrationError(f"calibration input {position} contains NaN or Inf values")
    return tuple(t.contiguous() for t in tensors)
