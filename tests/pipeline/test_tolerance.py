"""What the default tolerance asks for, and how a figure over a few held-out samples is judged:
met (its one-sided 95% bound clears the threshold), missed (the observed value does not meet it),
or undecided (observed within, too few samples to certify)."""

from __future__ import annotations

import pytest

from optimizer_pipeline import parse_config
from optimizer_pipeline.config import Tolerance
from optimizer_pipeline.fidelity.measures import assess
from wire.contract.report import Fidelity, OutputFidelity

DEFAULT_FOR_CLASS_SCORES = parse_config({}).resolved_tolerance(has_class_scores=True)


def _fidelity(samples: int, agreement: float | None, cosine: float, cosine_std: float = 0.0, judged_by: str = "agreement") -> Fidelity:
    output = OutputFidelity(
        name="output", shape=[samples, 10], agreement=agreement, cosine_mean=cosine, cosine_min=cosine, cosine_std=cosine_std,
        sqnr_db=40.0, max_abs_error=0.1, kind="class_scores" if judged_by == "agreement" else "embedding", judged_by=judged_by,
    )
    return Fidelity(samples=samples, outputs=[output], agreement=agreement, cosine=cosine, cosine_min=cosine, sqnr_db=40.0, max_abs_error=0.1)


def test_the_default_for_class_scores_also_requires_the_outputs_to_stay_close():
    assert (DEFAULT_FOR_CLASS_SCORES.metric, DEFAULT_FOR_CLASS_SCORES.cosine_floor) == ("agreement", 0.99)
    # An embedding keeps its largest dimension (agreement 1.0) while the vector itself drifts.
    verdict, why = assess(_fidelity(1000, 1.0, 0.957), DEFAULT_FOR_CLASS_SCORES)
    assert verdict == "missed" and "cosine 0.9570" in why and "(required ≥ 0.99)" in why
    assert assess(_fidelity(1000, 1.0, 0.995), DEFAULT_FOR_CLASS_SCORES)[0] == "met"


def test_a_tolerance_the_user_sets_is_taken_as_given():
    user = parse_config({"tolerance": {"metric": "agreement", "threshold": 0.9}}).resolved_tolerance(has_class_scores=True)
    assert user.cosine_floor is None and assess(_fidelity(1000, 0.95, 0.5), user)[0] == "met"


@pytest.mark.parametrize(
    "agree, samples, verdict",
    [
        (32, 32, "undecided"),  # 32 of 32 shows only ≥ 0.90 at 95%
        (31, 32, "missed"),  # observed 0.969: below the threshold
        (268, 268, "met"),  # the fewest samples that certify 0.99 with no miss
        (1000, 1000, "met"),
        (995, 1000, "undecided"),  # within, but 1000 samples do not yet show ≥ 0.99
        (985, 1000, "missed"),
    ],
)
def test_agreement_is_judged_on_a_one_sided_bound(agree: int, samples: int, verdict: str):
    tolerance = Tolerance(metric="agreement", threshold=0.99)
    judged, why = assess(_fidelity(samples, agree / samples, 1.0), tolerance)
    assert judged == verdict, why
    assert f"over {samples} samples" in why


def test_undecided_names_the_samples_that_would_settle_it():
    fidelity = _fidelity(32, 1.0, 1.0)
    verdict, why = assess(fidelity, Tolerance(metric="agreement", threshold=0.99))
    assert verdict == "undecided" and fidelity.more_samples == 268 - 32
    assert f"about {268 - 32} more held-out (unlabeled) samples" in why


def test_mean_cosine_is_judged_on_a_student_t_bound():
    tolerance = Tolerance(metric="cosine", threshold=0.99)
    # Mean 0.995 with spread 0.01 over 8 samples: the bound 0.995 − 1.895·0.01/√8 = 0.9883 is short.
    few = _fidelity(8, None, 0.995, cosine_std=0.01, judged_by="cosine")
    verdict, why = assess(few, tolerance)
    assert verdict == "undecided" and "Student t bound 0.9883" in why
    assert few.more_samples is not None and few.more_samples + 8 >= (1.645 * 0.01 / 0.005) ** 2
    assert assess(_fidelity(64, None, 0.995, cosine_std=0.01, judged_by="cosine"), tolerance)[0] == "met"
    assert assess(_fidelity(64, None, 0.985, cosine_std=0.001, judged_by="cosine"), tolerance)[0] == "missed"
