"""Fixtures shared by tests/integration and tests/browser."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.conftest import Appliance, running_appliance


@pytest.fixture(scope="session")
def appliance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Appliance]:
    """One real installation (install.sh --prefix, supervisord, 2 API processes, the
    worker) for every test of the session that asks for it."""
    with running_appliance(tmp_path_factory, "appl") as app:
        yield app
