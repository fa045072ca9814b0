"""autodiscover_listeners(): every installed app's listener modules, once, errors named."""

import pytest
from django.test.utils import modify_settings

from messagio import autodiscover_listeners, discovery
from messagio.registry import registry
from tests.testapp import messagio as testapp_listeners


@pytest.fixture
def rediscover(monkeypatch):
    """Let autodiscovery run again, as in a fresh process."""
    monkeypatch.setattr(discovery, "_discovered", False)


def test_the_app_discovered_the_test_apps_listeners_at_start_up():
    listeners = [s.listener for s in registry.subscriptions_for(testapp_listeners.Ping)]
    assert listeners[:3] == [
        testapp_listeners.first,
        testapp_listeners.second,
        testapp_listeners.broken,
    ]


def test_calling_it_again_is_harmless(rediscover):
    before = registry.subscriptions_for(testapp_listeners.Ping)
    autodiscover_listeners()
    autodiscover_listeners()
    assert registry.subscriptions_for(testapp_listeners.Ping) == before


def test_an_import_error_inside_a_listener_module_is_raised_with_the_app_name(monkeypatch):
    with modify_settings(INSTALLED_APPS={"append": "tests.brokenapp"}):
        monkeypatch.setattr(discovery, "_discovered", False)
        with pytest.raises(ImportError, match=r"tests.brokenapp.messagio of the app 'brokenapp'"):
            autodiscover_listeners()


def test_a_bad_subscription_is_a_type_error_at_import_that_names_the_app(monkeypatch):
    with modify_settings(INSTALLED_APPS={"append": "tests.badsubapp"}):
        monkeypatch.setattr(discovery, "_discovered", False)
        with pytest.raises(TypeError, match="NotAMessagio") as error:
            autodiscover_listeners()
    assert "badsubapp" in "".join(error.value.__notes__)
