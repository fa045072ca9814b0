"""Fixtures shared by every test: a registry that each test may change freely."""

from importlib.metadata import entry_points

import pytest

from messagio.registry import registry

# Installed with pip (pip install -e . too), messagio registers this plugin itself (entry
# point pytest11); registering it again here would stop pytest at startup.
if not any(ep.value == "messagio.testing" for ep in entry_points(group="pytest11")):
    pytest_plugins = ["messagio.testing"]


@pytest.fixture(autouse=True)
def isolated_registry():
    """Whatever a test subscribes or unsubscribes is undone after it."""
    state = registry.snapshot()
    yield registry
    registry.restore(state)
