"""schemathesis against the live server's own OpenAPI document: whatever a client sends
within it, no answer is a 5xx, and every documented answer matches its schema."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from tests.api.conftest import Served, serve

T0 = 1_767_571_200


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    url = f"sqlite:///{tmp_path_factory.mktemp('schema') / 'schema.db'}"
    for running in serve(url, rate_limit=10_000.0, rate_burst=10_000):
        # Data, so that routes about a device answer 200 as well as 404.
        lines = "\n".join(
            f"telemetry,device_id=pump-1 temperature={i} {(T0 + 60 * i) * 10**9}" for i in range(200)
        )
        running.post_lines(lines)
        running.app.run_jobs("all")
        yield running


def test_no_answer_is_a_server_error_or_breaks_its_schema(live: Served) -> None:
    # The Python API rather than schemathesis' pytest plugin (which does not support pytest 9
    # yet): every operation of the live schema, each with a bounded number of examples.
    schema = schemathesis.openapi.from_url(f"{live.url}/openapi.json")
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1

        @given(case=operation.as_strategy())
        @settings(
            max_examples=12,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def check(case: schemathesis.Case) -> None:
            case.call_and_validate(checks=[not_a_server_error, response_schema_conformance])

        try:
            check()
        except (
            Exception,
            BaseExceptionGroup,
        ) as exc:  # collect every operation's failure, not just the first
            failures.append(f"{operation.label}: {str(exc)[:2000]}")
    assert operations >= 25
    assert not failures, "\n\n".join(failures)


def test_the_openapi_document_says_errors_are_problem_details_and_how_to_show_a_key(live: Served) -> None:
    document = live.client.get("/openapi.json").json()
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert "HTTPValidationError" not in document["components"]["schemas"]  # FastAPI's, never answered
    operation = document["paths"]["/api/v1/devices/{device_id}/series/{metric}"]["get"]
    assert operation["security"] == [{"bearer": []}]
    for code, model in (("422", "ValidationProblem"), ("default", "Problem")):
        content = operation["responses"][code]["content"]
        assert content == {"application/problem+json": {"schema": {"$ref": f"#/components/schemas/{model}"}}}
    # ThingSpeak's routes answer as ThingSpeak does (0, -1), not with problem details.
    assert "default" not in document["paths"]["/update"]["get"]["responses"]
