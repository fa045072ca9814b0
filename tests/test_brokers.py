"""Priorities reach each broker the way it orders them; groups follow priority and queue."""

from dataclasses import dataclass

import pytest
from celery import Celery
from django.test import override_settings

from messagio import Messagio
from messagio.brokers import broker_priority, broker_unreachable, task_serializer
from messagio.payload import encode
from messagio.records import build_records, envelopes
from messagio.registry import registry


def test_a_broker_that_cannot_be_reached_is_told_from_one_that_refuses_a_message():
    from amqp.exceptions import AccessRefused, PreconditionFailed
    from kombu.exceptions import EncodeError, OperationalError

    assert broker_unreachable(OperationalError("Connection refused"))
    assert broker_unreachable(ConnectionRefusedError(111, "Connection refused"))
    assert not broker_unreachable(PreconditionFailed("inequivalent arg 'x-max-priority'"))
    assert broker_unreachable(AccessRefused("ACCESS_REFUSED - Login was refused"))
    assert not broker_unreachable(EncodeError("cannot serialize"))


def test_a_transports_own_connection_error_is_the_broker_unreachable(monkeypatch):
    # As publishing raises it when it is not retried (CELERY_TASK_PUBLISH_RETRY = False).
    from redis.exceptions import ConnectionError as RedisConnectionError

    from project.celery import app

    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)  # Celery prefers it to broker_url
    monkeypatch.setitem(app.conf, "broker_transport", None)  # the URL's (the demo names one)
    monkeypatch.setitem(app.conf, "broker_url", "memory://")
    assert not broker_unreachable(RedisConnectionError("Connection refused"))  # not this broker
    monkeypatch.setitem(app.conf, "broker_url", "redis://127.0.0.1:6379/0")
    assert broker_unreachable(RedisConnectionError("Connection refused"))


def test_a_queue_celery_does_not_know_is_not_the_broker_unreachable(monkeypatch):
    # Raised by Celery's router before any connection (task_create_missing_queues off); a
    # KeyError, which Redis's transport counts among its connection errors.
    from celery.exceptions import QueueNotFound

    from project.celery import app

    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)  # Celery prefers it to broker_url
    monkeypatch.setitem(app.conf, "broker_url", "redis://127.0.0.1:6379/0")
    assert not broker_unreachable(QueueNotFound("refused-queue"))


@pytest.mark.parametrize(
    ("accept_content", "expected"),
    [
        (["json"], "json"),
        (["json", "pickle"], "json"),
        (["application/json", "application/x-python-serialize"], "json"),
        (["pickle"], "pickle"),
        (["application/x-python-serialize"], "pickle"),
        (["yaml"], "json"),  # neither: messagio.E001 says so
        (None, "json"),  # kombu's "accept everything"
        (["json", "not-installed"], "json"),  # an unknown name does not stop every publish
        (["pickle", "not-installed"], "pickle"),
    ],
)
def test_tasks_travel_as_json_unless_the_project_accepts_only_pickle(accept_content, expected):
    app = Celery(set_as_current=False)
    app.conf.accept_content = accept_content
    assert task_serializer(app) == expected


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


def tasks_of(messagio):
    """The task envelopes a fire of ``messagio`` would publish."""
    subscriptions = registry.subscriptions_for(type(messagio))
    return envelopes(*build_records(messagio, encode(messagio), subscriptions))


def names(envelope):
    return [spec["id"].rsplit(".", 1)[-1] for spec in envelope["listeners"]]


def test_an_envelope_carries_its_signed_payload_through_a_json_message():
    from kombu.serialization import dumps, loads

    from messagio.records import envelope_payload

    registry.subscribe(Evt, a)
    messagio = Evt()
    event, deliveries = build_records(
        messagio, encode(messagio), [*registry.subscriptions_for(Evt)]
    )
    (envelope,) = envelopes(event, deliveries)

    content_type, encoding, body = dumps(((envelope,), {}, {}), serializer="json")
    ((received,), _, _) = loads(body, content_type, encoding, accept={content_type})

    assert received == envelope
    assert envelope_payload(received) == event.payload
    # A message sent before payloads travelled as base64 text (pickled: bytes).
    assert envelope_payload(dict(envelope, payload=event.payload)) == event.payload


def test_listeners_of_equal_priority_and_queue_share_one_task_in_order():
    for listener in (c, a, b):
        registry.subscribe(Evt, listener)
    registry.subscribe(Evt, d, priority=9)

    tasks = tasks_of(Evt())

    assert [(t["priority"], names(t)) for t in tasks] == [(9, ["d"]), (5, ["c", "a", "b"])]


def test_a_listener_with_its_own_queue_gets_its_own_task():
    registry.subscribe(Evt, a)
    registry.subscribe(Evt, b, queue="slow")

    tasks = tasks_of(Evt())

    assert sorted((t["queue"] or "", names(t)) for t in tasks) == [("", ["a"]), ("slow", ["b"])]


def test_default_priority_comes_from_settings():
    registry.subscribe(Evt, a)
    with override_settings(MESSAGIO={"DEFAULT_PRIORITY": 2}):
        assert tasks_of(Evt())[0]["priority"] == 2
