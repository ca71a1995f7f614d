"""Schemathesis fuzzes a real server from its own /openapi.json (issue 10, item 6): no 5xx, and
answers that conform to the schema: status codes, media types, bodies, and management routes that
refuse a request without the key. The examples are derandomized, so a run repeats the last one."""

from __future__ import annotations

import pytest

from fuzzing import Fuzzer, OperationReport, ready_target
from server_harness import AUTH, server_fixture

server = server_fixture()
# Per operation and generation mode: about a minute for the whole run on 2 cores.
MAX_EXAMPLES = 40


@pytest.fixture(scope="module")
def reports(server) -> list[OperationReport]:
    # Cases aimed at a ready model with an optimized variant reach real answers.
    return Fuzzer(server.url, AUTH, MAX_EXAMPLES, model=ready_target(server.url), derandomize=True).run()


def test_fuzzing_finds_no_server_error_and_no_answer_off_the_schema(reports):
    found = [f"{r.operation} ({r.mode}) {summary}\n    {curl}" for r in reports for summary, curl in r.failures.items()]
    assert not found, "\n".join(found)


def test_the_fuzzing_reaches_past_the_key_and_the_lookup(reports):
    by_name = {(r.operation, r.mode): r for r in reports}
    assert all(r.examples for r in reports if r.mode == "positive"), [r.operation for r in reports if not r.examples]
    # The key went along (a download needs it) and aimed cases found the model and its variants.
    assert by_name["GET /models/{model_id}/variants/{variant}", "positive"].statuses[200]
    assert by_name["GET /models/{model_id}/report.html", "positive"].statuses[200]
    assert by_name["POST /models", "negative"].statuses[401], "negative cases that drop the key get a 401"
