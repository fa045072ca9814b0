"""Listeners that no module subscribes at import: tests subscribe them at run time only."""

from tests.testapp.messagio import record


def runtime_listener(event) -> None:
    record("runtime_listener", event)
