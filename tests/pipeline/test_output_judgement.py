"""Each output is judged by what it is (class scores by agreement, the rest by cosine), on a one-sided
bound over the held-out samples, and bf16 candidates exist exactly where the CPU computes bf16."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch

import digits_models
import tiny_models
from conftest import FAST
from optimizer_pipeline import Report, inspect_upload, optimize, parse_config
from optimizer_pipeline.choice import choose
from optimizer_pipeline.errors import InvalidConfigError
from optimizer_pipeline.fidelity.measures import judge_outputs
from optimizer_pipeline.runtimes.cpu import bf16_from_cpuinfo, cpu_has_bf16
from optimizer_pipeline.fidelity.outputs import flatten_outputs, output_kind
from optimizer_pipeline.search.space import DEFAULT_SPACE, expand_space
from wire.contract.confidence import agreement_bound, samples_for_agreement
from wire.contract.report import CandidateReport, Fidelity

INT8 = {**FAST, "candidates": [{"plan": [{"pass": "quantize_static"}]}], "batch_size": 16}


def _outputs(builder) -> list[tuple[str, torch.Tensor]]:
    archive, inputs = builder()
    with torch.no_grad():
        return flatten_outputs(torch.jit.load(io.BytesIO(archive))(*inputs))


def test_a_box_regression_is_judged_by_cosine_and_int8_that_flips_its_argmax_is_accepted():
    archive, inputs = tiny_models.box_regressor()
    report = optimize(archive, tiny_models.calibration_bytes(inputs), INT8).report
    assert [(o.kind, o.judged_by) for o in report.outputs] == [("regression", "cosine")]
    assert "4 raw columns" in report.outputs[0].reason
    int8 = report.candidates[0].fidelity.outputs[0]
    # The four coordinates sit close together: int8 reorders them on some samples, which top-1
    # agreement would have called a miss, while the vector itself is unchanged.
    assert int8.agreement is not None and int8.agreement < 0.99
    assert int8.cosine_mean >= 0.99 and int8.judged_by == "cosine"
    assert report.candidates[0].meets_tolerance and report.candidates[0].certified


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    return digits_models.digits()


def test_a_weak_classifiers_logits_are_judged_by_agreement_and_its_landmarks_and_box_by_cosine(digits):
    images, labels = digits
    model = digits_models.DigitsFace(images[:1200], labels[:1200])
    unseen = images[1200:1456]
    with torch.no_grad():
        box, points, scores = model(unseen)
    # Real but weak: about 78% right, and no clear winner per row (the margin rule alone read these
    # logits as a regression, and cosine then let through candidates that flipped 5-7% of the answers).
    assert 0.7 <= float((scores.argmax(1) == labels[1200:1456]).float().mean()) <= 0.85
    kind, why = output_kind(scores)
    assert kind == "class_scores" and "without a clear winner" in why and "read as a classifier's logits" in why
    kind, why = output_kind(points)
    assert kind == "regression" and "fixed column offsets set the values" in why and "the top column is one of a few" in why
    assert output_kind(box)[0] == "regression"

    archive = tiny_models._trace(model, (unseen,))
    # (freeze: quantize_jit cannot return this tuple, the pipeline's int8 paths are tested elsewhere)
    freeze = {**FAST, "candidates": [{"plan": [{"pass": "freeze"}]}], "batch_size": 16}
    report = optimize(archive, tiny_models.calibration_bytes((unseen,)), freeze).report
    assert [(o.name, o.kind, o.judged_by) for o in report.outputs] == [
        ("output_0", "regression", "cosine"), ("output_1", "regression", "cosine"), ("output_2", "class_scores", "agreement"),
    ]
    assert [o.judged_by for o in report.candidates[0].fidelity.outputs] == ["cosine", "cosine", "agreement"]
    assert report.tolerance["metric"] == "agreement"


def test_untrained_heads_are_not_read_as_class_scores(digits):
    images, _ = digits
    with torch.no_grad():
        kind, why = output_kind(digits_models.untrained_classifier()(images[:256]))
    assert kind == "regression" and "the softmax is near uniform" in why
    # tests/tiny_models.py: seeded random weights on Gaussian inputs, whose winners vary between
    # samples like a classifier's; their near-uniform softmax keeps them judged by cosine.
    for builder in (tiny_models.gated_scripted, tiny_models.two_inputs, tiny_models.dict_output, tiny_models.lstm, tiny_models.cnn_bn):
        for name, tensor in _outputs(builder):
            assert output_kind(tensor)[0] != "class_scores", (builder.__name__, name, output_kind(tensor))


def test_an_embedding_is_judged_by_cosine():
    [judgement] = judge_outputs(_outputs(tiny_models.embedder))
    assert (judgement.kind, judgement.judged_by) == ("embedding", "cosine") and "unit L2 norm" in judgement.reason
    assert parse_config({}).resolved_tolerance(has_class_scores=False).metric == "cosine"


def test_a_model_with_a_class_head_and_a_box_head_judges_each_by_its_kind_and_says_so():
    archive, inputs = tiny_models.onet_like()
    report = optimize(archive, tiny_models.calibration_bytes(inputs), INT8).report
    assert [(o.name, o.kind, o.judged_by) for o in report.outputs] == [
        ("output_0", "regression", "cosine"), ("output_1", "regression", "cosine"), ("output_2", "class_scores", "agreement"),
    ]
    assert "probabilities" in report.outputs[2].reason
    int8 = report.candidates[0]
    assert [o.judged_by for o in int8.fidelity.outputs] == ["cosine", "cosine", "agreement"]
    verdict_note = next(n for n in int8.notes if n.startswith("tolerance"))
    assert "output_0 (regression): cosine" in verdict_note and "output_2 (class_scores): agreement" in verdict_note
    # Every int8 output stays close, so int8 is in the running: the box head no longer rejects it.
    assert int8.meets_tolerance
    # ...but 16 held-out samples cannot certify 99% agreement on the class head: undecided, and the
    # report names the samples that would settle it (a one-sided Wilson bound needs 268 with no miss).
    held_out = report.calibration.held_out_samples
    assert not int8.certified and int8.fidelity.outputs[2].verdict == "undecided"
    assert int8.fidelity.more_samples == samples_for_agreement(1.0, 0.99) - held_out == 268 - held_out
    assert f"{held_out} held-out samples are too few to certify this" in verdict_note
    assert int8.fidelity.outputs[0].verdict == "met"  # the box head alone is certified by its cosine bound
    # The report still parses as stored.
    assert Report.model_validate_json(report.model_dump_json()).outputs == report.outputs


def test_enough_held_out_samples_certify_agreement():
    freeze = {**FAST, "candidates": [{"plan": [{"pass": "freeze"}]}], "batch_size": 16}
    few_archive, few_inputs = tiny_models.probabilities(64)
    few = optimize(few_archive, tiny_models.calibration_bytes(few_inputs), freeze).report
    assert few.candidates[0].fidelity.verdict == "undecided" and not few.candidates[0].certified
    archive, inputs = tiny_models.probabilities(1100)  # 275 held out: enough for 99% with no miss
    report = optimize(archive, tiny_models.calibration_bytes(inputs), freeze).report
    frozen = report.candidates[0]
    assert frozen.certified and frozen.fidelity.verdict == "met"
    assert agreement_bound(1.0, report.calibration.held_out_samples) >= 0.99


def _judged(name: str, speedup: float, verdict: str) -> CandidateReport:
    fidelity = Fidelity(samples=16, outputs=[], agreement=1.0, cosine=1.0, cosine_min=1.0, sqnr_db=40.0, max_abs_error=0.0,
                        verdict=verdict, more_samples=252 if verdict == "undecided" else None)
    notes = ["tolerance missed: output (class_scores): agreement 0.9722 → missed"] if verdict == "missed" else []
    return CandidateReport(name=name, plan=[], status="ok", fidelity=fidelity, speedup=speedup,
                           meets_tolerance=verdict != "missed", certified=verdict == "met", notes=notes)


def test_a_certified_candidate_is_chosen_over_a_faster_undecided_one_and_an_uncertified_pick_says_so():
    config = parse_config({})
    chosen = choose([_judged("int8", 4.0, "undecided"), _judged("f32", 2.0, "met"), _judged("int4", 6.0, "missed")], config)
    assert chosen.candidate == "f32" and chosen.certified and "NOT certified" not in chosen.reason
    # The reason names what the pick left behind, and what would settle the uncertified one.
    assert chosen.reason.startswith("fastest certified candidate within the tolerance: 2.00x"), chosen.reason
    assert "faster in process than this one's 2.00x there: int8 4.00x, within the tolerance on 16 held-out samples but not certified" in chosen.reason
    assert "about 252 more held-out (unlabeled) samples at the same figures would settle it" in chosen.reason
    assert "int4 6.00x, outside the tolerance (output (class_scores): agreement 0.9722 → missed)" in chosen.reason
    plain = choose([_judged("f32", 2.0, "met"), _judged("fp16", 2.02, "undecided")], config)
    assert plain.reason == "fastest candidate within the tolerance: 2.00x at batch 0", plain.reason
    alone = choose([_judged("int8", 4.0, "undecided"), _judged("broken", 9.0, "missed")], config)
    assert alone.candidate == "int8" and alone.certified is False
    assert "NOT certified" in alone.reason and "about 252 more held-out (unlabeled) samples" in alone.reason


def test_the_user_names_the_class_outputs():
    outputs = _outputs(tiny_models.onet_like)
    tolerance = parse_config({"tolerance": {"metric": "agreement", "threshold": 0.99, "class_outputs": ["output_0"]}}).tolerance
    judged = judge_outputs(outputs, tolerance)
    assert [(o.kind, o.judged_by) for o in judged] == [("class_scores", "agreement"), ("regression", "cosine"), ("other", "cosine")]
    assert judged[0].reason == "named in tolerance.class_outputs"


def test_a_class_output_the_model_does_not_have_is_a_config_error():
    archive, inputs = tiny_models.onet_like(8)
    config = {"tolerance": {"metric": "agreement", "threshold": 0.99, "class_outputs": ["scores"]}}
    with pytest.raises(InvalidConfigError, match=r"class_outputs names \['scores'\].*output_0"):
        inspect_upload(archive, tiny_models.calibration_bytes(inputs), config=config)


def test_labels_make_their_output_class_scores():
    outputs = _outputs(tiny_models.box_regressor)
    labels = torch.zeros(len(outputs[0][1]), dtype=torch.long)
    [judged] = judge_outputs(outputs, None, labels)
    assert judged.kind == "class_scores" and judged.reason.startswith("labels were given")


def test_bf16_candidates_exist_exactly_where_the_cpu_computes_bf16():
    has = cpu_has_bf16()
    if has:  # never on without the kernel's flags
        assert bf16_from_cpuinfo(Path("/proc/cpuinfo").read_text())
    plans = [c.plan for c in parse_config({}).candidate_specs()]
    bf16 = [p for p in plans if any(getattr(step, "precision", "f32") == "bf16" for step in p)]
    assert (len(bf16) == 2) is has and (not bf16) is (not has)
    if has:  # OpenVINO in bf16, and its int8 IR with the float ops in bf16
        assert [[s.name for s in p] for p in bf16] == [["onnx_export", "ov_convert"], ["onnx_export", "ov_convert", "ov_quantize"]]
    assert any("bf16" in plan.key for plan in expand_space(DEFAULT_SPACE)) is has


def test_the_cpuinfo_flags_that_mean_bf16():
    assert bf16_from_cpuinfo("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 avx512_vnni\n")
    assert bf16_from_cpuinfo("flags\t\t: fpu avx2 amx_tile amx_bf16\n")
    assert not bf16_from_cpuinfo("flags\t\t: fpu sse avx2 fma f16c\n")


def test_the_report_page_and_table_say_how_each_output_was_judged():
    from optimizer_pipeline.report.html import render_html
    from wire.report_text.table import format_report

    archive, inputs = tiny_models.box_regressor(32)
    report = optimize(archive, tiny_models.calibration_bytes(inputs), {**FAST, "candidates": [{"plan": [{"pass": "freeze"}]}]}).report
    said = "output by cosine (regression: 4 raw columns"
    assert said in format_report(report) and said in render_html(report)
