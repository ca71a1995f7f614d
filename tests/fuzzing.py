"""Schemathesis against a running server's /openapi.json, one operation and generation mode at a time.

Shared by tests/security/test_fuzz.py (bounded, in the suite) and bench/fuzz.py (longer). Failures are
collected, not raised: one run reports every distinct problem, each with a curl line that replays it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import hypothesis
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, Verbosity
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.core.transport import Response
from schemathesis.schemas import APIOperation
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    response_schema_conformance,
    status_code_conformance,
)

import tiny_models
from server_harness import FORCED_FREEZE, upload, wait_for

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance, ignored_auth]
# LitServe's own routes, which it documents and answers in its own shapes; not ours to fix.
NOT_OURS = r"^/_litserve/"
MODES = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
INFERENCE_PATHS = ("/predict", "/compare")
VARIANTS = ("original", "optimized")
CALL_TIMEOUT = 60.0


@dataclass
class OperationReport:
    operation: str
    mode: str
    examples: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    # First line of each distinct failure -> a curl command that reproduces it.
    failures: dict[str, str] = field(default_factory=dict)


def ready_target(url: str) -> str:
    """Upload a small model and wait until it is ready, with an optimized variant; returns its id."""
    archive, inputs = tiny_models.mlp()
    accepted = upload(url, archive, inputs, name="fuzz-target", config=FORCED_FREEZE)
    assert accepted.status_code == 202, accepted.text
    model_id = accepted.json()["id"]
    assert wait_for(url, model_id)["state"] == "ready"
    return model_id


@dataclass
class Fuzzer:
    """Fuzzes a live server at `url`; `headers` go with every request (the API key, so management
    routes are exercised too). With `model` (an id), about half the positive cases name that model
    instead of a random one, so they get past the lookup to decoding, inference and real answers."""

    url: str
    headers: dict[str, str]
    max_examples: int
    model: str | None = None
    derandomize: bool = False
    seed: int | None = None

    def run(self) -> list[OperationReport]:
        schema = schemathesis.openapi.from_url(f"{self.url}/openapi.json").exclude(path_regex=NOT_OURS)
        operations = [result.ok() for result in schema.get_all_operations()]
        with requests.Session() as session:
            return [self.operation(operation, mode, session) for operation in operations for mode in MODES]

    def operation(self, operation: APIOperation, mode: GenerationMode, session: requests.Session) -> OperationReport:
        report = OperationReport(operation.label, mode.value)

        # No shrinking: nothing is raised; every example is a request to a real server and costs time.
        @hypothesis.settings(
            max_examples=self.max_examples,
            deadline=None,
            database=None,
            derandomize=self.derandomize,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
            verbosity=Verbosity.quiet,
        )
        @hypothesis.given(case=self._cases(operation, mode))
        def call(case: schemathesis.Case) -> None:
            response = case.call(base_url=self.url, session=session, headers=self.headers, timeout=CALL_TIMEOUT)
            report.examples += 1
            report.statuses[response.status_code] += 1
            for failure in self._failures(case, response):
                message = failure.message.strip()
                curl = case.as_curl_command(self.headers, base_url=self.url)
                report.failures.setdefault(f"{failure.title}: {message.splitlines()[0] if message else ''}", curl)

        if self.seed is not None:
            call = hypothesis.seed(self.seed)(call)
        try:
            call()
        except hypothesis.errors.Unsatisfiable:
            pass  # nothing to negate (e.g. GET / takes no input): the report shows 0 examples
        return report

    def _cases(self, operation: APIOperation, mode: GenerationMode) -> st.SearchStrategy[schemathesis.Case]:
        generated = operation.as_strategy(generation_mode=mode)
        # Negative cases are meant to be refused anyway; a deleted model would leave the rest nothing to hit.
        if self.model is None or mode is not GenerationMode.POSITIVE or operation.method.upper() == "DELETE":
            return generated
        if "{model_id}" in operation.path:
            variants = VARIANTS if "{variant}" in operation.path else (None,)
            aimed = [{"model_id": self.model} | ({"variant": variant} if variant else {}) for variant in variants]
            return st.one_of(generated, *(operation.as_strategy(generation_mode=mode, path_parameters=p) for p in aimed))
        if operation.path in INFERENCE_PATHS:
            return st.one_of(generated, generated.map(self._naming_the_model))
        return generated

    def _naming_the_model(self, case: schemathesis.Case) -> schemathesis.Case:
        case.body = {**case.body, "model": self.model}
        return case

    def _failures(self, case: schemathesis.Case, response: Response) -> list[Failure]:
        try:
            case.validate_response(response, checks=CHECKS, headers=self.headers, transport_kwargs={"base_url": self.url})
        except Failure as failure:
            return [failure]
        except FailureGroup as group:
            return list(group.exceptions)
        return []
