"""Shared by the benchmarks: the real-data models they run on, and small file helpers."""

from __future__ import annotations

import io
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from . import data, models  # noqa: E402

from optimizer_pipeline.intake.calibration import Batch  # noqa: E402
from optimizer_pipeline.fidelity.measures import accuracy  # noqa: E402
from optimizer_pipeline.intake.model_loading import run_model  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parents[1] / "results"

# name -> (dataset, architecture factory, training epochs)
MODELS: dict[str, tuple[str, Callable[[], torch.nn.Module], int]] = {
    "cnn_bn_digits": ("digits", lambda: models.CnnBN(width=16), 15),
    "mlp_digits": ("digits", lambda: models.MLP(), 20),
    "lstm_digits": ("digits", lambda: models.RowLSTM(), 20),
    "cnn_bn_fashion": ("fashion", lambda: models.CnnBN(), 2),
    "resnet_fashion": ("fashion", lambda: models.ResNetSmall(), 2),
    "densenet_fashion": ("fashion", lambda: models.DenseBlockNet(), 2),
    "depthwise_fashion": ("fashion", lambda: models.DepthwiseSeparable(), 2),
}


# Digits has 1300 training images: at most this many are kept out of training as the unlabeled set
# (enough for the pipeline's compound plans, MIN_HELD_OUT; 532 are left to train on).
DIGITS_SPARE = 512


@dataclass
class LabelledTask:
    archive: bytes
    calibration: bytes
    labels: bytes
    test: Batch
    train_seconds: float
    model: torch.nn.Module | None = None  # the trained eager module, for exporting it another way
    unlabeled: bytes | None = None  # training inputs the model never saw, without labels (labelled_task's `unlabeled`)


def traced(model: torch.nn.Module, example: tuple[torch.Tensor, ...]) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(model.eval(), example, strict=False), buffer)
    return buffer.getvalue()


def saved(value) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def labelled_task(name: str, calibration_size: int, test_size: int, unlabeled: int = 0) -> LabelledTask:
    """Train `name` on real data; the calibration batch is training data the model never saw, and so
    are the `unlabeled` inputs (Fashion-MNIST: from the training images past the ones used, so the
    model is the same either way; digits has no spare images: they are left out of its training)."""
    import time

    dataset, factory, epochs = MODELS[name]
    if dataset == "digits":
        train_x, train_y, test_x, test_y = data.digits()
        unlabeled = min(unlabeled, DIGITS_SPARE)
        spare, train_x, train_y = train_x[:unlabeled], train_x[unlabeled:], train_y[unlabeled:]
    else:
        used = data.FASHION_TRAIN
        train_x, train_y, test_x, test_y = data.fashion_mnist(used + unlabeled)
        spare, train_x, train_y = train_x[used:], train_x[:used], train_y[:used]
    fit_x, fit_y = train_x[:-calibration_size], train_y[:-calibration_size]
    started = time.perf_counter()
    model = models.train(factory(), fit_x, fit_y, epochs)
    return LabelledTask(
        archive=traced(model, (train_x[:2],)),
        calibration=saved(train_x[-calibration_size:]),
        labels=saved(train_y[-calibration_size:]),
        test=Batch((test_x[:test_size],), test_y[:test_size]),
        train_seconds=time.perf_counter() - started,
        model=model,
        unlabeled=saved(spare.clone()) if unlabeled else None,
    )


def median_call_ms(call: Callable[[], object], calls: int, warmup: int = 5) -> float:
    """Median wall time of `call()` in ms, after `warmup` untimed calls, under inference mode."""
    import statistics
    import time

    times = []
    with torch.inference_mode():
        for _ in range(warmup):
            call()
        for _ in range(calls):
            started = time.perf_counter()
            call()
            times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e3


def test_accuracy(variant, test: Batch) -> float:
    return accuracy(run_model(variant, test)[0][1], test.labels)


def write_results(path: Path, results: list[dict]) -> None:
    """Results JSON with what produced them: torch version, thread count, date."""
    import json
    import time

    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d")}
    path.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    print(f"wrote {path}", file=sys.stderr)
