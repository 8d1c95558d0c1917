"""Property-based run from the served OpenAPI spec (schemathesis), against its own
installation because it creates, changes and deletes users and keys at random.

Bounded: a fixed number of examples per operation and a pytest timeout."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.integration.conftest import Appliance, new_api_key, running_appliance

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def fuzz_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Appliance, str]]:
    with running_appliance(tmp_path_factory, "fuzz") as app:
        yield app, new_api_key(app, "fuzz", "admin")


def test_no_server_errors_and_standard_error_shape(fuzz_target: tuple[Appliance, str]) -> None:
    app, key = fuzz_target
    schema = schemathesis.openapi.from_url(f"{app.base_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    operations = [op for op in operations if not op.path.startswith("/_test")]
    assert len(operations) >= 15
    failures: list[str] = []
    statuses: dict[int, int] = {}

    def check(case: schemathesis.Case) -> None:
        response = case.call(
            base_url=app.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=45
        )
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        where = f"{case.method} {case.formatted_path} -> {response.status_code}"
        if response.status_code >= 500:
            failures.append(f"{where}: {response.text[:300]}")
        elif response.status_code >= 400:
            body = response.json()
            if not (isinstance(body, dict) and isinstance(body.get("error"), str)):
                failures.append(f"{where}: not the standard error shape: {response.text[:300]}")
            elif "requestId" not in body or "Traceback" in response.text:
                failures.append(f"{where}: {response.text[:300]}")

    for operation in operations:
        run = settings(
            max_examples=12,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )(given(case=operation.as_strategy())(check))
        run()
    assert failures == []
    assert sum(statuses.values()) >= 5 * len(operations), statuses
    assert any(200 <= s < 300 for s in statuses), statuses  # not only refusals
