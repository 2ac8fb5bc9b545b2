"""Integration-test set-up: every in-process coordinator is stopped after the test that started
it (a module fixture's, by that fixture or at the end of the session)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.harness import STARTED, stop_started


@pytest.fixture(autouse=True, scope="session")
def _stop_every_coordinator() -> Iterator[None]:
    yield
    stop_started()


@pytest.fixture(autouse=True)
def _stop_coordinators() -> Iterator[None]:
    before = len(STARTED)  # wider-scoped fixtures are set up first: theirs are kept
    yield
    stop_started(before)
