"""System checks: each misconfiguration gets its id and a hint that names the fix."""

import pytest
from celery import Celery
from django.core import checks
from django.db import connection
from django.test import override_settings
from kombu import Exchange, Queue

from messagio import Messagio, listen_to_message
from messagio.checks import celery_config_errors
from messagio.registry import registry


@pytest.fixture
def no_subscriptions(isolated_registry, monkeypatch):
    """A Celery app judged alone, not with the test app's own queues or the broker of the env."""
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)  # Celery prefers it to broker_url
    registry.restore(({}, {}))


uses_no_subscriptions = pytest.mark.usefixtures("no_subscriptions")


def app_with(**config):
    app = Celery(set_as_current=False)
    config.setdefault("accept_content", ["json"])
    config.setdefault("CELERY_DB_REUSE_MAX", 500)
    config.setdefault("worker_cancel_long_running_tasks_on_connection_loss", True)
    app.conf.update(config)
    return app


def ids(errors):
    return [e.id for e in errors]


def test_the_test_configuration_passes_every_check():
    assert [m for m in checks.run_checks() if m.id.startswith("messagio.")] == []


@uses_no_subscriptions
def test_celery_accepting_neither_json_nor_pickle_is_an_error_with_the_fix():
    errors = celery_config_errors(app_with(broker_url="memory://", accept_content=["yaml"]))
    assert ids(errors) == ["messagio.E001"]
    assert "CELERY_ACCEPT_CONTENT" in errors[0].hint


@uses_no_subscriptions
@pytest.mark.parametrize(
    "accept_content",
    [["json"], ["pickle"], ["json", "pickle"], None, ["json", "not-installed"]],
)
def test_celery_accepting_json_or_pickle_passes(accept_content):
    app = app_with(broker_url="memory://", accept_content=accept_content)
    assert celery_config_errors(app) == []


def deploy_messages(check_id):
    return [m for m in checks.run_checks(include_deployment_checks=True) if m.id == check_id]


@pytest.mark.parametrize("accept_content", [["json", "pickle"], ["pickle", "not-installed"], None])
def test_accepting_pickle_is_a_deployment_warning(accept_content, monkeypatch):
    from project.celery import app

    assert deploy_messages("messagio.W009") == []  # JSON alone, as the demo project
    monkeypatch.setitem(app.conf, "accept_content", accept_content)  # None: kombu takes all
    (message,) = deploy_messages("messagio.W009")
    assert "run code in your workers" in message.msg
    assert "need only JSON" in message.hint
    # Not outside deployment checks: the original library's README sets pickle.
    assert [m for m in checks.run_checks() if m.id == "messagio.W009"] == []


@uses_no_subscriptions
def test_a_route_to_an_undeclared_queue_is_a_warning():
    app = app_with(
        broker_url="memory://",
        task_routes=([("messagio.tasks.*", {"queue": "messagio"})],),
        task_queues=(Queue("celery", Exchange("celery"), routing_key="celery"),),
    )
    errors = celery_config_errors(app)
    assert ids(errors) == ["messagio.W002"]
    assert "'messagio'" in errors[0].msg


@uses_no_subscriptions
def test_a_route_away_from_the_default_queue_without_task_queues_is_a_warning():
    # What a project gets with the Install section's settings alone: the worker consumes
    # "celery", and messagio's tasks wait in "messagio" for ever.
    app = app_with(broker_url="memory://", task_routes=([("messagio.tasks.*", "messagio")],))

    errors = celery_config_errors(app)

    assert ids(errors) == ["messagio.W002"]
    assert "'messagio'" in errors[0].msg and "CELERY_TASK_QUEUES is not set" in errors[0].msg
    assert celery_config_errors(app_with(broker_url="memory://")) == []


@uses_no_subscriptions
def test_the_readme_routes_and_queues_pass():
    app = app_with(
        broker_url="memory://",
        task_routes=([("messagio.tasks.*", {"queue": "messagio"})],),
        task_queues=(
            Queue("celery", Exchange("celery"), routing_key="celery"),
            Queue("messagio", Exchange("messagio"), routing_key="messagio"),
        ),
    )
    assert celery_config_errors(app) == []


@uses_no_subscriptions
def test_redis_without_priority_steps_is_a_warning():
    errors = celery_config_errors(app_with(broker_url="redis://127.0.0.1:6379/0"))
    assert ids(errors) == ["messagio.W003"]
    assert "priority_steps" in errors[0].hint


@uses_no_subscriptions
def test_rabbitmq_queues_without_max_priority_are_a_warning():
    errors = celery_config_errors(app_with(broker_url="amqp://guest@127.0.0.1//"))
    assert ids(errors) == ["messagio.W004"]
    app = app_with(broker_url="amqp://guest@127.0.0.1//", task_queue_max_priority=10)
    assert celery_config_errors(app) == []


def test_unknown_messagio_settings_are_a_warning():
    with override_settings(MESSAGIO={"MAX_PAYLOAD_BYTE": 10}):
        messages = [m for m in checks.run_checks() if m.id == "messagio.W001"]
    assert "MAX_PAYLOAD_BYTE" in messages[0].msg


def test_a_bad_message_center_is_an_error():
    with override_settings(MESSAGIO={"MESSAGE_CENTER": "no.such.Center"}):
        messages = [m for m in checks.run_checks() if m.id == "messagio.E002"]
    assert len(messages) == 1


@uses_no_subscriptions
def test_closing_the_database_after_every_task_is_a_warning_unless_on_sqlite(settings):
    app = app_with(broker_url="memory://")
    del app.conf["CELERY_DB_REUSE_MAX"]
    errors = celery_config_errors(app)
    if settings.DATABASES["default"]["ENGINE"].endswith("sqlite3"):
        assert errors == []  # opening a SQLite file costs next to nothing
    else:
        assert ids(errors) == ["messagio.W006"]
        assert "CELERY_DB_REUSE_MAX" in errors[0].hint
    with override_settings(MESSAGIO={"RECORD": False}):
        assert celery_config_errors(app) == []
    app.conf["CELERY_DB_REUSE_MAX"] = 0  # Celery's fixup reads 0 as "close every time"
    assert ids(celery_config_errors(app)) == ids(errors)


class Slow(Messagio):
    pass


def slow_listener(messagio):
    pass


def slow_retrier(messagio):
    pass


REDIS_WITH_STEPS = {"priority_steps": list(range(10)), "sep": ":"}


@uses_no_subscriptions
def test_a_retry_held_past_redis_visibility_timeout_is_a_warning_naming_it():
    listen_to_message(Slow, autoretry_for=(KeyError,), default_retry_delay=3000)(slow_retrier)
    listen_to_message(Slow)(slow_listener)  # the defaults: 10 minutes at most
    app = app_with(broker_url="redis://127.0.0.1:6379/0", broker_transport_options=REDIS_WITH_STEPS)

    errors = celery_config_errors(app)

    assert ids(errors) == ["messagio.W007"]
    assert "slow_retrier is held for 3600s" in errors[0].msg  # delay + time limit
    assert "slow_listener" not in errors[0].msg
    assert "visibility_timeout of 3600s" in errors[0].msg
    assert "visibility_timeout" in errors[0].hint
    longer = dict(REDIS_WITH_STEPS, visibility_timeout=4000)
    app = app_with(broker_url="redis://127.0.0.1:6379/0", broker_transport_options=longer)
    assert celery_config_errors(app) == []


@uses_no_subscriptions
def test_a_time_limit_past_rabbitmq_consumer_timeout_is_a_warning_naming_it():
    listen_to_message(Slow, time_limit=1800)(slow_listener)
    app = app_with(broker_url="amqp://guest@127.0.0.1//", task_queue_max_priority=10)

    errors = celery_config_errors(app)

    assert ids(errors) == ["messagio.W007"]
    assert "slow_listener may run for 1800s" in errors[0].msg
    assert "recorded failed (WorkerLostTooOftenError)" in errors[0].msg
    assert "consumer_timeout" in errors[0].hint
    assert celery_config_errors(app_with(broker_url="memory://")) == []  # redelivers nothing
    with override_settings(MESSAGIO={"MAX_LOST_ATTEMPTS": None}):
        assert "with no end" in celery_config_errors(app)[0].msg


@uses_no_subscriptions
def test_the_rabbitmq_warning_says_how_to_silence_it_once_consumer_timeout_is_raised():
    listen_to_message(Slow, time_limit=1800)(slow_listener)
    app = app_with(broker_url="amqp://guest@127.0.0.1//", task_queue_max_priority=10)

    (warning,) = celery_config_errors(app)

    # messagio cannot read rabbitmq.conf: a warning that cannot be cleared says so.
    assert 'SILENCED_SYSTEM_CHECKS = ["messagio.W007"]' in warning.hint


@uses_no_subscriptions
def test_a_listener_without_a_time_limit_past_the_brokers_redelivery_is_a_warning_naming_it(
    settings,
):
    settings.MESSAGIO = {"DEFAULT_TIME_LIMIT": None}
    listen_to_message(Slow)(slow_listener)
    listen_to_message(Slow, autoretry_for=(KeyError,), time_limit=5)(slow_retrier)
    app = app_with(broker_url="redis://127.0.0.1:6379/0", broker_transport_options=REDIS_WITH_STEPS)

    errors = celery_config_errors(app)

    assert ids(errors) == ["messagio.W007"]
    assert "slow_listener may run with no time limit" in errors[0].msg
    assert "slow_retrier" not in errors[0].msg


def route_by_messagio_type(name, args, kwargs, options, task=None, **kw):
    """A project's router that reads the deliver task's envelope."""
    if name == "messagio.tasks.deliver":
        return {"queue": "messagio-" + args[0]["type"].rsplit(".", 1)[-1].lower()}
    return None


def route_that_fails(name, args, kwargs, options, task=None, **kw):
    raise LookupError("no route for a message like this one")


@uses_no_subscriptions
def test_a_route_of_the_projects_that_reads_the_envelope_gets_one_from_the_checks():
    app = app_with(broker_url="memory://", task_routes=(route_by_messagio_type,))

    errors = celery_config_errors(app)

    assert ids(errors) == ["messagio.W002"]
    assert "'messagio-messagio'" in errors[0].msg
    assert (
        celery_config_errors(app_with(broker_url="memory://", task_routes=(route_that_fails,)))
        == []
    )


QUORUM = {"x-queue-type": "quorum"}


@uses_no_subscriptions
def test_messagio_queues_on_direct_exchanges_beside_quorum_queues_are_a_warning():
    # Celery delays a countdown message through RabbitMQ only off a direct exchange: else a
    # worker holds every retry until it is due. (Nor is W004 given: a quorum queue refuses
    # x-max-priority.)
    def amqp_app(exchange_type):
        return app_with(
            broker_url="amqp://guest@127.0.0.1//",
            task_routes=([("messagio.tasks.*", {"queue": "messagio"})],),
            task_queues=(
                Queue("celery", Exchange("celery", type="topic"), queue_arguments=QUORUM),
                Queue("messagio", Exchange("messagio", type=exchange_type), queue_arguments=QUORUM),
            ),
        )

    errors = celery_config_errors(amqp_app("direct"))

    assert ids(errors) == ["messagio.W012"]
    assert "messagio" in errors[0].msg and 'type="topic"' in errors[0].hint
    assert celery_config_errors(amqp_app("topic")) == []


@pytest.mark.parametrize(
    "name, value, expected",
    [
        ("BROKER_PRIORITY", "inverse", "'auto' or 'inverted' or 'direct'"),
        ("RELAY_INTERVAL", 0, "a number of seconds, 1 or more"),
        ("RELAY_INTERVAL", None, "a number of seconds, 1 or more"),
        ("PRUNE_BATCH_SIZE", 0, "a whole number, 1 or more"),
        (
            "RETAIN_FAILED_DAYS",
            -1,
            "a number of days, 0 or more, at most 36,500 (None: keep forever)",
        ),
        ("SIGNING_KEY_FALLBACKS", "abc", "a list of non-empty strings"),
        ("DEFAULT_PRIORITY", 42, "a whole number from 0 to 10"),
        ("MAX_LOST_ATTEMPTS", 0, "a whole number, 1 or more (None: no limit)"),
        ("RECORD", "yes", "True or False"),
        ("STUCK_TIMEOUT", float("inf"), "a number of seconds, more than 0"),
        # A cut-off before year 1: every relay run would fail.
        ("STUCK_TIMEOUT", 1e11, "a number of seconds, more than 0, at most 3,153,600,000"),
        # Over django-celery-beat's integer column: migrate would fail.
        ("RELAY_INTERVAL", 3e8, "a number of seconds, 1 or more, at most 214,748,364"),
    ],
)
def test_a_setting_messagio_cannot_use_is_an_error_saying_what_it_takes(name, value, expected):
    with override_settings(MESSAGIO={name: value}):
        messages = [m for m in checks.run_checks() if m.id.startswith("messagio.")]
    assert ids(messages) == ["messagio.E003"]
    assert messages[0].msg == f"MESSAGIO[{name!r}] = {value!r} cannot be used."
    assert messages[0].hint.startswith(f"It takes {expected}")


@pytest.mark.parametrize("name", ["RELAY_INTERVAL", "PRUNE_INTERVAL"])
@pytest.mark.parametrize("value", [0.5, 0.999])
def test_a_periodic_interval_under_a_second_is_an_error_saying_it_takes_1_or_more(name, value):
    """django-celery-beat's intervals are whole seconds: under 1, migrate would schedule
    the task every 0 seconds."""
    with override_settings(MESSAGIO={name: value}):
        messages = [m for m in checks.run_checks() if m.id.startswith("messagio.")]

    assert ids(messages) == ["messagio.E003"]
    assert messages[0].msg == f"MESSAGIO[{name!r}] = {value!r} cannot be used."
    assert messages[0].hint.startswith("It takes a number of seconds, 1 or more")


@pytest.mark.parametrize("value", [1, 1.5, 30])
def test_a_periodic_interval_of_a_second_or_more_passes(value):
    with override_settings(MESSAGIO={"RELAY_INTERVAL": value, "PRUNE_INTERVAL": value}):
        assert [m for m in checks.run_checks() if m.id.startswith("messagio.")] == []


def test_every_default_is_a_value_its_setting_takes():
    from messagio.conf import DEFAULTS, VALID

    assert set(VALID) == set(DEFAULTS)
    assert {name: VALID[name](value) for name, value in DEFAULTS.items()} == dict.fromkeys(DEFAULTS)


@uses_no_subscriptions
def test_a_listener_allowed_to_run_past_stuck_timeout_is_a_warning_naming_it():
    listen_to_message(Slow, time_limit=4000)(slow_listener)
    listen_to_message(Slow, autoretry_for=(KeyError,), default_retry_delay=60)(slow_retrier)

    with override_settings(MESSAGIO={"STUCK_TIMEOUT": 3600}):
        messages = [m for m in checks.run_checks() if m.id == "messagio.W008"]
    with override_settings(MESSAGIO={"STUCK_TIMEOUT": 4100}):
        assert [m for m in checks.run_checks() if m.id == "messagio.W008"] == []

    assert len(messages) == 1
    assert "slow_listener may run for 4000s" in messages[0].msg
    assert "slow_retrier" not in messages[0].msg  # 60 s, then its own 600 s run
    assert "STUCK_TIMEOUT" in messages[0].hint


@uses_no_subscriptions
def test_a_listener_without_a_time_limit_or_with_a_long_retry_delay_is_a_warning_too():
    listen_to_message(Slow)(slow_listener)
    listen_to_message(Slow, autoretry_for=(KeyError,), default_retry_delay=4000, time_limit=60)(
        slow_retrier
    )

    with override_settings(MESSAGIO={"DEFAULT_TIME_LIMIT": None}):
        messages = [m for m in checks.run_checks() if m.id == "messagio.W008"]

    assert "slow_listener has no time limit" in messages[0].msg
    assert "a retry of tests.test_checks.slow_retrier waits 4000s" in messages[0].msg


@uses_no_subscriptions
def test_a_group_whose_listeners_together_outlast_celerys_time_limit_is_a_warning():
    listen_to_message(Slow, time_limit=200)(slow_listener)
    listen_to_message(Slow, time_limit=200)(slow_retrier)  # the same group: one task
    app = app_with(broker_url="memory://", task_time_limit=300)

    errors = celery_config_errors(app)

    assert ids(errors) == ["messagio.W010"]
    assert "slow_listener, tests.test_checks.slow_retrier may take 400s in one task" in (
        errors[0].msg
    )
    assert "not less than Celery's time limit of 300s" in errors[0].msg
    assert "CELERY_TASK_ANNOTATIONS" in errors[0].hint
    assert celery_config_errors(app_with(broker_url="memory://", task_time_limit=500)) == []
    assert celery_config_errors(app_with(broker_url="memory://")) == []


@uses_no_subscriptions
def test_a_listener_without_a_time_limit_under_a_soft_celery_limit_is_a_warning_too():
    listen_to_message(Slow, time_limit=None)(slow_listener)

    with override_settings(MESSAGIO={"DEFAULT_TIME_LIMIT": None, "STUCK_TIMEOUT": 3600}):
        errors = celery_config_errors(app_with(broker_url="memory://", task_soft_time_limit=60))

    assert "messagio.W010" in ids(errors)
    assert "slow_listener have no time limit" in errors[ids(errors).index("messagio.W010")].msg


@pytest.mark.skipif(connection.vendor != "sqlite", reason="the records are in SQLite here only")
def test_sqlite_without_immediate_transactions_is_a_warning(monkeypatch):
    options = dict(connection.settings_dict.get("OPTIONS") or {})
    assert [m for m in checks.run_checks() if m.id == "messagio.W011"] == []

    options.pop("transaction_mode", None)
    monkeypatch.setitem(connection.settings_dict, "OPTIONS", options)
    messages = [m for m in checks.run_checks() if m.id == "messagio.W011"]

    assert len(messages) == 1
    assert "database is locked" in messages[0].msg
    assert '"transaction_mode": "IMMEDIATE"' in messages[0].hint
    monkeypatch.setitem(connection.settings_dict, "OPTIONS", {"transaction_mode": "EXCLUSIVE"})
    assert [m for m in checks.run_checks() if m.id == "messagio.W011"] == []
    monkeypatch.setitem(connection.settings_dict, "OPTIONS", {})
    monkeypatch.setattr(connection, "is_in_memory_db", lambda: True)  # a test settings' DB
    assert [m for m in checks.run_checks() if m.id == "messagio.W011"] == []


@pytest.mark.parametrize("value", [["DEFAULT_QUEUE"], "messagio"])
def test_a_messagio_setting_that_is_not_a_dict_is_refused_saying_what_it_takes(value):
    from django.core.exceptions import ImproperlyConfigured

    from messagio.conf import get_setting

    with override_settings(MESSAGIO=value):
        with pytest.raises(ImproperlyConfigured, match="settings.MESSAGIO must be a dict"):
            get_setting("RECORD")


@uses_no_subscriptions
def test_rabbitmq_without_cancelling_tasks_on_a_connection_loss_is_a_warning():
    # RabbitMQ hands a lost connection's messages to other workers at once, while the first
    # worker goes on running them.
    def app(broker_url, cancel):
        return app_with(
            broker_url=broker_url,
            task_queue_max_priority=10,
            broker_transport_options={"priority_steps": list(range(10))},
            worker_cancel_long_running_tasks_on_connection_loss=cancel,
        )

    errors = celery_config_errors(app("amqp://guest@127.0.0.1//", False))

    assert ids(errors) == ["messagio.W013"]
    assert "CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = True" in errors[0].hint
    assert celery_config_errors(app("amqp://guest@127.0.0.1//", True)) == []
    assert celery_config_errors(app("redis://127.0.0.1:6379/0", False)) == []
