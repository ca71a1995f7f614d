"""The cases of bench/peers.py: a model, what optiserve is given, and how the bench judges a variant.

Every case is judged on real held-out data the model and the pipeline never saw, independently of
how optiserve judged it:
- classifiers: test accuracy, at most ACCURACY_BUDGET lost;
- all-MiniLM-L6-v2 (real weights): the sentence embedding's cosine to the original's on held-out
  real sentences, mean at least COSINE_BUDGET (the default tolerance's threshold for an output that
  is not class scores);
- the class + box model: the class head by test accuracy (as a classifier), the box head by its
  relative error to the original's box, mean at most BOX_RELATIVE_ERROR; its error against the true
  box of the ink is shown beside it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from . import data, minilm, models
from .common import MODELS, labelled_task, saved, traced

from optimizer_pipeline.fidelity.outputs import NamedOutputs
from optimizer_pipeline.intake.calibration import Batch
from optimizer_pipeline.intake.model_loading import run_model

ACCURACY_BUDGET = 0.01
COSINE_BUDGET = 0.99
BOX_RELATIVE_ERROR = 0.02
CONV_MODELS = {"cnn_bn_digits", "cnn_bn_fashion", "resnet_fashion", "densenet_fashion", "depthwise_fashion", "class_box_fashion"}
EXTRA_CASES = ("class_box_fashion", "minilm")


@dataclass
class Case:
    name: str
    archive: bytes
    calibration: bytes  # what optimize() is given, as the upload would give it
    calibration_batch: Batch  # the same inputs, for the peers' calibration
    test: Batch  # real held-out inputs (labels where there are labels)
    judge: Callable[[NamedOutputs], dict]  # a variant's outputs on `test` -> {"metrics": ..., "within_budget": ...}
    budget: str  # the bench's budget in words
    unlabeled: bytes | None = None
    calls_share: float = 1.0  # slow models take fewer timed calls per process


def all_case_names() -> list[str]:
    return [*MODELS, *EXTRA_CASES]


def make_case(name: str, calibration: int, test: int, unlabeled: int) -> Case:
    if name == "minilm":
        return _minilm_case(calibration, test)
    if name == "class_box_fashion":
        return _class_box_case(calibration, test, unlabeled)
    task = labelled_task(name, calibration, test, unlabeled if name in CONV_MODELS else 0)
    judge = _classifier_judge(task.test.labels, run_model(torch.jit.load(_buffer(task.archive)), task.test)[0][1])
    return Case(name, task.archive, task.calibration, _batch(task.calibration), task.test, judge,
                f"test accuracy drop <= {ACCURACY_BUDGET:.0%} on {len(task.test)} real test samples", task.unlabeled)


def _classifier_judge(labels: torch.Tensor, original_scores: torch.Tensor, output: str | None = None) -> Callable[[NamedOutputs], dict]:
    original = _accuracy(original_scores, labels)

    def judge(outputs: NamedOutputs) -> dict:
        scores = dict(outputs)[output] if output else outputs[0][1]
        value = _accuracy(scores, labels)
        return {"metrics": {"accuracy": value, "accuracy_drop": original - value}, "within_budget": original - value <= ACCURACY_BUDGET}

    return judge


def _minilm_case(calibration: int, test: int) -> Case:
    archive, tokenize = minilm.traced_minilm()
    test = min(test, 512)  # a forward of 512 sentences per variant is evidence enough, and MiniLM is slow
    texts = minilm.sentences(calibration + test)  # a seeded draw: the held-out sentences are never calibrated on
    calibration_inputs = tokenize(texts[:calibration])
    held_out = Batch(tokenize(texts[calibration:]))
    original = run_model(torch.jit.load(_buffer(archive)), held_out)[0][1]

    def judge(outputs: NamedOutputs) -> dict:
        cosine = torch.nn.functional.cosine_similarity(outputs[0][1].float(), original, dim=1)
        mean = float(cosine.mean())
        return {"metrics": {"cosine_mean": mean, "cosine_min": float(cosine.min())}, "within_budget": mean >= COSINE_BUDGET}

    return Case("minilm", archive, saved(calibration_inputs), Batch(calibration_inputs), held_out, judge,
                f"mean cosine of the embedding >= {COSINE_BUDGET} on {len(held_out)} held-out real sentences", calls_share=0.34)


def _class_box_case(calibration: int, test: int, unlabeled: int) -> Case:
    train_x, train_y, test_x, test_y = data.fashion_mnist(data.FASHION_TRAIN + unlabeled)
    spare, train_x, train_y = train_x[data.FASHION_TRAIN:], train_x[: data.FASHION_TRAIN], train_y[: data.FASHION_TRAIN]
    ink = (0.1 - 0.286) / 0.353  # a raw pixel above 0.1, in the normalised scale fashion_mnist() returns
    fit_x, fit_y = train_x[:-calibration], train_y[:-calibration]
    model = models.train_class_and_box(models.ClassAndBox(), fit_x, fit_y, models.ink_boxes(fit_x, ink), epochs=2)
    archive = traced(model, (train_x[:2],))
    held_out = Batch((test_x[:test],), test_y[:test])
    true_boxes = models.ink_boxes(held_out.inputs[0], ink)
    reference = run_model(torch.jit.load(_buffer(archive)), held_out)
    classes = _classifier_judge(held_out.labels, reference[0][1], "output_0")
    original_box = reference[1][1]
    pixels = 27  # a box coordinate of 1.0 is the far edge of the 28-pixel image

    def judge(outputs: NamedOutputs) -> dict:
        box = dict(outputs)["output_1"].float()
        relative = float(((box - original_box).norm(dim=1) / original_box.norm(dim=1).clamp_min(1e-6)).mean())
        verdict = classes(outputs)
        verdict["metrics"].update({
            "box_relative_error": relative,
            "box_mae_px": float((box - true_boxes).abs().mean() * pixels),
            "box_mae_px_original": float((original_box - true_boxes).abs().mean() * pixels),
        })
        verdict["within_budget"] = verdict["within_budget"] and relative <= BOX_RELATIVE_ERROR
        return verdict

    calibration_inputs = train_x[-calibration:]
    return Case("class_box_fashion", archive, saved(calibration_inputs), Batch((calibration_inputs,)), held_out, judge,
                f"class head: test accuracy drop <= {ACCURACY_BUDGET:.0%}; box head: mean relative error to the original's box "
                f"<= {BOX_RELATIVE_ERROR:.0%}; on {len(held_out)} real test samples",
                saved(spare.clone()) if unlabeled else None)


def _accuracy(scores: torch.Tensor, labels: torch.Tensor) -> float:
    return float((scores.argmax(1) == labels).float().mean())


def _batch(calibration: bytes) -> Batch:
    value = torch.load(_buffer(calibration), weights_only=True)
    return Batch(tuple(value) if isinstance(value, (tuple, list)) else (value,))


def _buffer(data: bytes):
    import io

    return io.BytesIO(data)
