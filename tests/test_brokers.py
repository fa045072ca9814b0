"""Priorities reach each broker the way it orders them; groups follow priority and queue."""

from dataclasses import dataclass

import pytest
from celery import Celery
from django.test import override_settings

from messagio import Messagio
from messagio.brokers import broker_priority
from messagio.dispatch import plan
from messagio.registry import registry


@pytest.mark.parametrize(
    ("url", "priority", "expected"),
    [
        ("redis://127.0.0.1:6379/0", 10, 0),
        ("redis://127.0.0.1:6379/0", 9, 0),
        ("redis://127.0.0.1:6379/0", 5, 4),
        ("redis://127.0.0.1:6379/0", 0, 9),
        ("amqp://guest@127.0.0.1//", 10, 10),
        ("amqp://guest@127.0.0.1//", 0, 0),
        ("filesystem://", 7, 7),
    ],
)
def test_priorities_are_mapped_for_the_broker(url, priority, expected, monkeypatch):
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)  # Celery prefers it to broker=
    assert broker_priority(Celery(broker=url, set_as_current=False), priority) == expected


def test_a_setting_forces_the_mapping():
    app = Celery(broker="amqp://", set_as_current=False)
    with override_settings(MESSAGIO={"BROKER_PRIORITY": "inverted"}):
        assert broker_priority(app, 10) == 0


@dataclass
class Evt(Messagio):
    n: int = 0


def a(m):
    pass


def b(m):
    pass


def c(m):
    pass


def d(m):
    pass


def test_listeners_of_equal_priority_and_queue_share_one_group_in_order():
    for listener in (c, a, b):
        registry.subscribe(Evt, listener)
    registry.subscribe(Evt, d, priority=9)

    groups = plan(registry.subscriptions_for(Evt))

    assert [(g.priority, [s.listener for s in g.subscriptions]) for g in groups] == [
        (9, [d]),
        (5, [c, a, b]),
    ]


def test_a_listener_with_its_own_queue_gets_its_own_group():
    registry.subscribe(Evt, a)
    registry.subscribe(Evt, b, queue="slow")

    groups = plan(registry.subscriptions_for(Evt))

    assert sorted((g.queue or "", len(g.subscriptions)) for g in groups) == [("", 1), ("slow", 1)]


def test_default_priority_comes_from_settings():
    registry.subscribe(Evt, a)
    with override_settings(MESSAGIO={"DEFAULT_PRIORITY": 2}):
        assert plan(registry.subscriptions_for(Evt))[0].priority == 2
