"""What the default tolerance asks for, and how agreement over a few samples is judged."""

from __future__ import annotations

import pytest

from optimizer_pipeline import parse_config
from optimizer_pipeline.config import Tolerance

DEFAULT_FOR_CLASS_SCORES = parse_config({}).resolved_tolerance(has_class_scores=True)


def test_the_default_for_class_scores_also_requires_the_outputs_to_stay_close():
    assert (DEFAULT_FOR_CLASS_SCORES.metric, DEFAULT_FOR_CLASS_SCORES.cosine_floor) == ("agreement", 0.99)
    # An embedding keeps its largest dimension (agreement 1.0) while the vector itself drifts.
    met, why = DEFAULT_FOR_CLASS_SCORES.judge(1.0, 64, cosine=0.957)
    assert not met and "cosine 0.9570 (required ≥ 0.99)" in why
    assert DEFAULT_FOR_CLASS_SCORES.judge(1.0, 64, cosine=0.995)[0]


def test_a_tolerance_the_user_sets_is_taken_as_given():
    user = parse_config({"tolerance": {"metric": "agreement", "threshold": 0.9}}).resolved_tolerance(has_class_scores=True)
    assert user.cosine_floor is None and user.judge(0.95, 64, cosine=0.5)[0]


@pytest.mark.parametrize(
    "agree, samples, met",
    [(31, 32, True), (30, 32, False), (253, 256, True), (250, 256, False), (1000, 1000, True)],
)
def test_agreement_is_judged_on_its_confidence_interval_not_its_point_value(agree: int, samples: int, met: bool):
    tolerance = Tolerance(metric="agreement", threshold=0.99)
    judged, why = tolerance.judge(agree / samples, samples, cosine=1.0)
    assert judged is met, why
    assert f"over {samples} samples" in why
