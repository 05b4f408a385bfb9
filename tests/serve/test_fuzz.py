"""Fuzzing the OpenAPI document (schemathesis): requests that fit it and requests that do not, to every operation of
the real server, bounded (a few examples each); no response may be a 500, and each must conform to the document
(documented status codes, content types, headers and bodies, each streamed event included).

The operations are driven through schemathesis' hypothesis strategies directly: its pytest plugin's lazy loading
(``schemathesis.pytest.from_fixture``) does not run under pytest 9.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

from tests.serve.conftest import ADMIN_KEY

pytestmark = pytest.mark.slow  # questions are answered by SmolLM2

EXAMPLES = 5  # per operation and mode: a bounded run (about a minute on 2 busy cores), not a search
# Left out: whether schema-valid requests are accepted (an upload's content decides: binary bytes in a .txt part, a
# .png name, an id given twice get 4xx by design, which no JSON Schema of multipart parts can say), and whether
# schema-invalid ones are refused (it strips the Authorization header this test sets, then counts the request that
# still carries it as an invalid one accepted; unknown query parameters are ignored, as HTTP APIs do).
EXCLUDED = [positive_data_acceptance, negative_data_rejection]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_server_errors_and_responses_conform(server, mode):
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    auth = {"Authorization": f"Bearer {ADMIN_KEY}"}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 8
    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
        def fuzz(case):
            case.call_and_validate(headers=auth, excluded_checks=EXCLUDED)

        try:
            fuzz()
        except Unsatisfiable:  # nothing invalid to send: an operation without parameters or body (/healthz)
            assert mode == GenerationMode.NEGATIVE
