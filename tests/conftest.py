"""Fixtures shared by every test: a registry that each test may change freely."""

import pytest

from messagio.registry import registry


@pytest.fixture(autouse=True)
def isolated_registry():
    """Whatever a test subscribes or unsubscribes is undone after it."""
    state = registry.snapshot()
    yield registry
    registry.restore(state)
