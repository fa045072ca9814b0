"""Fixtures shared by every test: a registry that each test may change freely."""

import pytest

from messagio.registry import registry

# Installed with pip, messagio registers this plugin itself (entry point pytest11).
pytest_plugins = ["messagio.testing"]


@pytest.fixture(autouse=True)
def isolated_registry():
    """Whatever a test subscribes or unsubscribes is undone after it."""
    state = registry.snapshot()
    yield registry
    registry.restore(state)
