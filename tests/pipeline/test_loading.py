"""Bad uploads raise the public typed errors, with messages that say what to fix."""

from __future__ import annotations

import io
import json
import warnings

import numpy as np
import pytest
import torch

import tiny_models
from optimizer_pipeline import (
    InvalidCalibrationError,
    InvalidConfigError,
    InvalidLabelsError,
    InvalidModelError,
    NonFiniteOutputError,
    inspect_upload,
    load_model,
    parse_config,
)
from optimizer_pipeline.intake.calibration import load_calibration, load_labels
from optimizer_pipeline.config import DEFAULT_CANDIDATES
from optimizer_pipeline.search.space import DEFAULT_SPACE


def _saved(value) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def cnn():
    return tiny_models.cnn_bn()


def test_random_bytes_are_not_a_model():
    with pytest.raises(InvalidModelError, match="not a TorchScript archive.*torch.jit.trace"):
        load_model(b"\x00\x01 definitely not a model" * 10)


def test_empty_file():
    with pytest.raises(InvalidModelError, match="empty"):
        load_model(b"")


def test_truncated_archive(cnn):
    with pytest.raises(InvalidModelError, match="torch.jit"):
        load_model(cnn[0][: len(cnn[0]) // 2])


def test_state_dict_is_recognised():
    with pytest.raises(InvalidModelError, match="state_dict"):
        load_model(_saved(tiny_models.ConvBN().state_dict()))


def test_pickled_module_is_recognised_and_never_unpickled():
    with pytest.raises(InvalidModelError, match="pickled Python object.*nn.Module"):
        load_model(_saved(tiny_models.ConvBN()))


def test_an_exported_program_with_a_fixed_batch_is_recognised_and_told_how_to_export_it(tmp_path):
    # A .pt2 is accepted (tests/pipeline/test_exported.py); one without a dynamic batch is refused with the fix.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(tiny_models.MLP().eval(), (torch.randn(2, 16),))
        torch.export.save(program, tmp_path / "model.pt2")
    with pytest.raises(InvalidModelError, match="fixed batch size.*dynamic_shapes"):
        load_model((tmp_path / "model.pt2").read_bytes())


def test_calibration_of_the_wrong_shape_reports_model_error_and_shapes(cnn):
    with pytest.raises(InvalidCalibrationError, match=r"shapes given: \(2, 5, 16, 16\)"):
        inspect_upload(cnn[0], _saved(torch.randn(8, 5, 16, 16)))


def test_a_failing_forward_reports_the_real_torchscript_error_and_the_expected_signature():
    archive, inputs = tiny_models.mlp()  # Linear(16, 64) first
    with pytest.raises(InvalidCalibrationError) as failed:
        inspect_upload(archive, _saved(torch.randn(8, 7)))
    message = str(failed.value)
    assert "mat1 and mat2 shapes cannot be multiplied (2x7 and 16x64)" in message
    assert "shapes given: (2, 7) float32; the model's forward takes ['x']" in message
    assert "The following operation failed" not in message


def test_wrong_number_of_inputs():
    archive, inputs = tiny_models.two_inputs()
    with pytest.raises(InvalidCalibrationError, match=r"takes 2 input\(s\) \['image', 'meta'\]"):
        inspect_upload(archive, _saved(inputs[0]))


def test_dict_calibration_is_matched_by_argument_name():
    archive, (image, meta) = tiny_models.two_inputs()
    summary = inspect_upload(archive, _saved({"meta": meta, "image": image}))
    assert summary.inputs == ["image", "meta"]
    assert summary.input_shapes == [[1, 8, 8], [4]]
    with pytest.raises(InvalidCalibrationError, match="missing \\['meta'\\]"):
        inspect_upload(archive, _saved({"image": image}))


def test_batch_of_one_is_refused(cnn):
    with pytest.raises(InvalidCalibrationError, match="at least 2 samples"):
        inspect_upload(cnn[0], _saved(torch.randn(1, 3, 16, 16)))


def test_nan_in_calibration_is_refused(cnn):
    data = torch.randn(4, 3, 16, 16)
    data[1, 0, 0, 0] = float("nan")
    with pytest.raises(InvalidCalibrationError, match="NaN"):
        inspect_upload(cnn[0], _saved(data))


def test_model_that_outputs_nan_is_refused():
    class Log(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.log(x)

    archive = io.BytesIO()
    torch.jit.save(torch.jit.script(Log()), archive)
    with pytest.raises(NonFiniteOutputError, match="NaN or Inf"):
        inspect_upload(archive.getvalue(), _saved(-torch.ones(4, 3)))


class Opaque:
    """Any class: unpickling it would run code from the upload."""


def test_pickled_object_as_calibration_is_refused(cnn):
    with pytest.raises(InvalidCalibrationError, match="arbitrary pickled objects are refused"):
        inspect_upload(cnn[0], _saved({"x": Opaque()}))


def test_labels_must_match_the_batch(cnn):
    with pytest.raises(InvalidLabelsError, match="got 3 labels for a calibration batch of 8"):
        load_labels(_saved(torch.zeros(3, dtype=torch.long)), 8)
    with pytest.raises(InvalidLabelsError, match="integer class ids"):
        load_labels(_saved(torch.zeros(8)), 8)
    assert load_labels(_saved(torch.arange(8, dtype=torch.int32)), 8).dtype == torch.int64


def test_npy_and_npz_calibration():
    array = np.random.default_rng(0).standard_normal((6, 16))
    buffer = io.BytesIO()
    np.save(buffer, array)
    batch = load_calibration(buffer.getvalue(), ["x"])
    assert batch.inputs[0].dtype == torch.float32 and len(batch) == 6
    buffer = io.BytesIO()
    np.savez(buffer, meta=np.zeros((5, 4), np.float32), image=np.zeros((5, 1, 8, 8), np.float32))
    batch = load_calibration(buffer.getvalue(), ["image", "meta"])
    assert [tuple(t.shape) for t in batch.inputs] == [(5, 1, 8, 8), (5, 4)]


def test_bad_config_names_the_field(cnn):
    calibration = tiny_models.calibration_bytes(cnn[1])
    with pytest.raises(InvalidConfigError, match="unknown pass 'sharpen'"):
        inspect_upload(cnn[0], calibration, config={"plan": [{"pass": "sharpen"}]})
    with pytest.raises(InvalidConfigError, match="tolerance.metric"):
        inspect_upload(cnn[0], calibration, config='{"tolerance": {"metric": "vibes", "threshold": 1}}')
    with pytest.raises(InvalidConfigError, match="amount"):
        inspect_upload(cnn[0], calibration, config={"plan": [{"pass": "prune_unstructured", "amount": 1.5}]})


TOO_LARGE = [
    {"plan": [{"pass": "finetune", "epochs": 1e9}]},
    {"plan": [{"pass": "finetune", "patience": 10**6}]},
    {"plan": [{"pass": "finetune", "steps": 10**9}]},
    {"plan": [{"pass": "finetune", "batch_size": 10**6}]},
    {"plan": [{"pass": "finetune", "lr": 1e6}]},
    {"plan": [{"pass": "quantize_qat", "epochs": 10**6}]},
    {"plan": [{"pass": "quantize_static", "calibration_batch_size": 10**6}]},
    {"plan": [{"pass": "quantize_static", "skip_sensitive": 10**6}]},
    {"plan": [{"pass": "prune_unstructured", "seed": 2**70}]},
    {"plan": [{"pass": "freeze"}] * 21},
    {"candidates": [{"plan": [{"pass": "freeze"}]}] * 101},
    {"search": {"max_trials": 10**9}},
    {"search": {"time_budget_s": 1e9}},
    {"search": {"folds": 1000}},
    {"search": {"first": [[{"pass": "freeze"}]] * 101}},
    {"latency": {"rounds": 10**9}},
    {"latency": {"warmup": 10**9}},
    {"latency": {"max_seconds": 1e9}},
    {"batch_size": 10**9},
    {"min_speedup": 1e9},
    {"seed": -1},
]


@pytest.mark.parametrize("config", TOO_LARGE, ids=lambda config: json.dumps(config)[:60])
def test_every_config_number_has_a_maximum(config):
    with pytest.raises(InvalidConfigError, match="less than or equal to|greater than or equal to|at most"):
        parse_config(config)


def test_a_search_space_that_expands_past_the_plan_limit_is_refused():
    amounts = [round(0.01 * i, 2) for i in range(1, 31)]
    stage = [None, {"pass": "prune_unstructured", "amount": amounts}]
    with pytest.raises(InvalidConfigError, match=r"search\.settings\.space: .*expands to up to 29791 plans; at most 10000"):
        parse_config({"search": {"space": {"a": stage, "b": stage, "c": stage}}})


@pytest.mark.parametrize(
    "config",
    [
        '{"tolerance": {"metric": "cosine", "threshold": "NaN"}}',
        '{"tolerance": {"metric": "sqnr_db", "threshold": Infinity}}',
        '{"tolerance": {"metric": "accuracy_drop", "threshold": -Infinity}}',
        '{"min_speedup": NaN}',
        '{"plan": [{"pass": "finetune", "lr": NaN}]}',
        '{"search": {"space": {"finetune": [{"pass": "finetune", "temperature": ["Infinity"]}]}}}',
    ],
)
def test_nan_or_inf_is_refused(cnn, config):
    # A quoted "NaN" is refused before its value is: a string is not a number (strict config).
    with pytest.raises(InvalidConfigError, match="finite number|valid number"):
        inspect_upload(cnn[0], tiny_models.calibration_bytes(cnn[1]), config=config)


def test_a_malformed_search_space_is_a_config_error():
    with pytest.raises(InvalidConfigError, match="a stage option is null, a pass spec"):
        parse_config({"search": {"space": {"prune": [5]}}})
    with pytest.raises(InvalidConfigError, match="unknown pass 'sharpen'"):
        parse_config({"search": {"first": [[{"pass": "sharpen"}]]}})


def test_the_built_in_plans_are_within_the_limits():
    parse_config({"search": {"space": DEFAULT_SPACE, "first": DEFAULT_CANDIDATES}})


def test_labels_must_be_ids_of_the_models_classes(cnn):
    archive, inputs = cnn  # 10 class scores
    calibration = tiny_models.calibration_bytes(inputs)
    too_high = torch.arange(len(inputs[0])) % 11
    with pytest.raises(InvalidLabelsError, match=r"label 10 is out of range: the model's output 'output' scores 10 classes, so labels must be class ids from 0 to 9"):
        inspect_upload(archive, calibration, labels=_saved(too_high))
    inspect_upload(archive, calibration, labels=_saved(torch.arange(len(inputs[0])) % 10))


def test_split_is_deterministic_and_disjoint():
    batch = load_calibration(_saved(torch.arange(20.0).unsqueeze(1)), ["x"])
    train, held = batch.split(0.25, seed=0)
    again_train, again_held = batch.split(0.25, seed=0)
    assert torch.equal(held.inputs[0], again_held.inputs[0])
    assert len(held) == 5 and len(train) == 15
    assert not set(train.inputs[0].flatten().tolist()) & set(held.inputs[0].flatten().tolist())
