"""Fixtures of the admin tests: a superuser's client, people with some permissions, a failed
event."""

import pytest

from tests.admin.factories import REPLAY, VIEW, client_for, make_event, make_user


@pytest.fixture
def superuser():
    return make_user("root", superuser=True)


@pytest.fixture
def admin_client(superuser):
    """A superuser's client (overrides pytest-django's, to use this module's user)."""
    return client_for(superuser)


@pytest.fixture
def viewer():
    return make_user("viewer", *VIEW)


@pytest.fixture
def replayer():
    return make_user("replayer", *REPLAY)


@pytest.fixture
def failed_event():
    """A Ping whose third listener failed: "3/4 ok, 1 failed"."""
    return make_event("succeeded", "succeeded", "failed", "succeeded")
