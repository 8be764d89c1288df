"""schemathesis generates requests from the server's own OpenAPI schema: none may end in a server
error (5xx other than the pool's intended 503/507), whatever the body, however malformed."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings

from tests.serve.conftest import KEY, Server

schemathesis = pytest.importorskip("schemathesis")


@pytest.fixture(scope="module")
def live(models_dir):
    server = Server(models_dir, "--max-tokens", "4")   # generated requests ask for up to thousands of tokens
    yield server
    server.stop()


def test_no_generated_request_is_a_server_error(live):
    # Driven through hypothesis directly: schemathesis' own pytest plugin does not run under pytest 9.
    schema = schemathesis.openapi.from_url(live.url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10
    seen = set()
    for operation in operations:
        @given(operation.as_strategy())
        @settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def call(case):
            response = case.call(base_url=live.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
            seen.add((case.method, operation.path))
            assert response.status_code < 500 or response.status_code in (503, 507), (
                f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:300]}")
        call()
    assert {("POST", "/v1/chat/completions"), ("POST", "/v2/models/{model_id}/infer")} <= seen
