"""System checks for the misconfigurations that otherwise fail silently in a worker."""

from __future__ import annotations

import math
from typing import Any

from django.core.checks import Error, Tags, Warning, register
from django.db import connections, router
from django.db.migrations.recorder import MigrationRecorder

from messagio.brokers import (
    JSON_CONTENT_TYPE,
    PICKLE_CONTENT_TYPE,
    accepted_content_types,
    is_amqp,
    is_redis,
)
from messagio.conf import get_setting, invalid_settings, unknown_settings
from messagio.dispatch import ENVELOPE_VERSION
from messagio.tasks import DELIVER_TASK

#: The trigram index of the admin's search by summary text (migration 0004, PostgreSQL).
SEARCH_INDEX = "messagio_ev_summary_trgm"
SEARCH_INDEX_SQL = (
    "CREATE EXTENSION IF NOT EXISTS pg_trgm; "
    f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {SEARCH_INDEX} ON messagio_event "
    "USING gin (UPPER(summary::text) gin_trgm_ops);"
)


#: How long RabbitMQ (3.8.15 and later) waits for a consumer to acknowledge a message before
#: it closes the channel and hands the message to another: its consumer_timeout default.
RABBITMQ_CONSUMER_TIMEOUT = 1800.0
#: How long kombu's Redis transport leaves a message unacknowledged before it hands it out
#: again, unless CELERY_BROKER_TRANSPORT_OPTIONS sets visibility_timeout.
REDIS_VISIBILITY_TIMEOUT = 3600.0


def _celery_app() -> Any:
    from celery import current_app

    return current_app


def _declared_queues(app: Any) -> dict[str, Any] | None:
    queues = app.conf.task_queues
    if not queues:
        return None
    return {queue.name: queue for queue in queues}


#: What a route of the deliver task is given as its arguments when the checks ask it where
#: messagio's tasks go: an envelope of the shape ``publish()`` sends, of no listener.
SAMPLE_ENVELOPE = {
    "v": ENVELOPE_VERSION, "event": "00000000-0000-0000-0000-000000000000",
    "type": "messagio.Messagio", "payload": "", "origin": "fire",
    "fired_at": "2000-01-01T00:00:00+00:00",
    "listener_count": 0, "priority": 5, "queue": None, "replay": None, "record": True,
    "deliveries_recorded": False, "shared": {}, "listeners": [], "seal": "",
}  # fmt: skip


def _routed_queue(app: Any) -> str | None:
    """The queue the project's routes give messagio's deliver task, or None when a route
    of its own could not say for a sample message (one that routes by a messagio's type)."""
    try:
        route = app.amqp.router.route({}, DELIVER_TASK, args=(SAMPLE_ENVELOPE,), kwargs={})
    except Exception:  # noqa: BLE001 - the project's router; a check must not stop the start
        return None
    queue = route.get("queue")
    return getattr(queue, "name", queue) or app.conf.task_default_queue


def _messagio_queues(app: Any) -> set[str]:
    from messagio.registry import registry

    routed = _routed_queue(app)
    queues = {routed} if routed else set()
    queues.update(s.queue for s in registry.subscriptions() if s.queue)
    if get_setting("DEFAULT_QUEUE"):
        queues.add(get_setting("DEFAULT_QUEUE"))
    return queues


@register(Tags.compatibility)
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    errors: list[Any] = []
    unknown = unknown_settings()
    if unknown:
        errors.append(
            Warning(
                f"Unknown MESSAGIO settings: {', '.join(unknown)}.",
                hint="Check the spelling; the known settings are listed in messagio/conf.py.",
                id="messagio.W001",
            )
        )
    invalid = invalid_settings()
    for name, value, expected in invalid:
        errors.append(
            Error(
                f"MESSAGIO[{name!r}] = {value!r} cannot be used.",
                hint=f"It takes {expected}; see the settings table in messagio's README.",
                id="messagio.E003",
            )
        )
    if invalid:
        return errors  # the checks below read them
    errors.extend(_stuck_while_held())
    from messagio.center import get_message_center

    try:
        get_message_center()
    except (ImportError, TypeError) as exc:
        errors.append(
            Error(
                f"MESSAGIO['MESSAGE_CENTER'] cannot be used: {exc}",
                hint="Name a subclass of messagio.AbstractMessageCenter by its dotted path, "
                "e.g. 'messagio.center.MessageCenter'.",
                id="messagio.E002",
            )
        )
    return errors


@register(Tags.compatibility)
def check_celery(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    if get_setting("MESSAGE_CENTER") != "messagio.center.MessageCenter":
        return []
    return [*celery_config_errors(_celery_app()), *_sqlite_locks()]


def _sqlite_locks() -> list[Any]:
    """W011: SQLite's transactions start DEFERRED, and one that reads, then writes, fails at
    once with "database is locked" while another process writes: with web processes,
    workers and beat recording in one file, now and then a fire or an outcome."""
    if not get_setting("RECORD"):
        return []
    from messagio.records import db_alias

    connection = connections[db_alias()]
    if connection.vendor != "sqlite" or connection.is_in_memory_db():
        return []  # no other process opens a database in memory
    options = connection.settings_dict.get("OPTIONS") or {}
    # Both take the write lock at BEGIN: a writer waits its turn instead of failing.
    if str(options.get("transaction_mode", "")).upper() in ("IMMEDIATE", "EXCLUSIVE"):
        return []
    return [
        Warning(
            "messagio records in SQLite, which web processes and workers write at once, "
            'without OPTIONS "transaction_mode": "IMMEDIATE": a transaction that reads and '
            'then writes fails with "database is locked" while another process writes.',
            hint='Give the database the options messagio\'s README shows: {"init_command": '
            '"PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;", "transaction_mode": '
            '"IMMEDIATE", "timeout": 30} (Django 5.1+), or use PostgreSQL.',
            id="messagio.W011",
        )
    ]


@register(Tags.security, deploy=True)
def check_pickle(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    accepted = accepted_content_types(_celery_app())
    if accepted is not None and PICKLE_CONTENT_TYPE not in accepted:
        return []
    return [
        Warning(
            "Celery accepts pickle: a worker runs whatever code a pickled message in its queues "
            "tells it to, so anyone who can write to the broker can run code in your workers.",
            hint='messagio\'s tasks need only JSON: CELERY_ACCEPT_CONTENT = ["json"], unless '
            "other tasks need pickle; keep the broker private either way.",
            id="messagio.W009",
        )
    ]


def celery_config_errors(app: Any) -> list[Any]:
    """The messagio checks of one Celery app's configuration."""
    errors: list[Any] = []
    accepted = accepted_content_types(app)
    if accepted is not None and not accepted & {JSON_CONTENT_TYPE, PICKLE_CONTENT_TYPE}:
        errors.append(
            Error(
                "Celery accepts neither JSON nor pickle, so workers reject every messagio task.",
                hint='Add "json" to CELERY_ACCEPT_CONTENT (Celery\'s default), e.g. '
                'CELERY_ACCEPT_CONTENT = ["json"].',
                id="messagio.E001",
            )
        )
    declared = _declared_queues(app)
    # Without CELERY_TASK_QUEUES, a worker started without -Q consumes the default one alone.
    consumed = set(declared) if declared is not None else {app.conf.task_default_queue}
    for queue in sorted(_messagio_queues(app) - consumed):
        where = (
            "which CELERY_TASK_QUEUES does not declare"
            if declared is not None
            else f"and CELERY_TASK_QUEUES is not set (only {app.conf.task_default_queue!r} "
            "is consumed then)"
        )
        errors.append(
            Warning(
                f"messagio tasks go to the queue {queue!r}, {where}: a worker started "
                "without -Q never consumes it.",
                hint=f'Add Queue("{queue}", Exchange("{queue}"), routing_key="{queue}") '
                "to CELERY_TASK_QUEUES (with the default queue), or change the route.",
                id="messagio.W002",
            )
        )
    if is_redis(app):
        steps = (app.conf.broker_transport_options or {}).get("priority_steps")
        if not steps or len(steps) < 10:
            errors.append(
                Warning(
                    "Redis serves messagio priorities in only 4 steps (kombu's default "
                    "priority_steps), so close priorities run in publish order.",
                    hint='Set CELERY_BROKER_TRANSPORT_OPTIONS = {"priority_steps": '
                    'list(range(10)), "sep": ":", "queue_order_strategy": "priority"}.',
                    id="messagio.W003",
                )
            )
    if is_amqp(app) and not app.conf.task_queue_max_priority:
        missing = [
            name
            for name in sorted(_messagio_queues(app))
            if declared is not None
            and name in declared
            and not (declared[name].queue_arguments or {}).get("x-max-priority")
            and not declared[name].max_priority
            # A quorum queue refuses x-max-priority (RabbitMQ 4 gives it two levels).
            and (declared[name].queue_arguments or {}).get("x-queue-type") != "quorum"
        ]
        if declared is None or missing:
            errors.append(
                Warning(
                    "RabbitMQ ignores priorities on queues declared without x-max-priority: "
                    f"{', '.join(missing) or 'the default queue'}.",
                    hint="Set CELERY_TASK_QUEUE_MAX_PRIORITY = 10, or declare the queue with "
                    'queue_arguments={"x-max-priority": 10}. An existing queue must be '
                    "deleted first: RabbitMQ cannot change a queue's arguments.",
                    id="messagio.W004",
                )
            )
    if is_amqp(app) and declared is not None:
        errors.extend(_retries_held_by_workers(app, declared))
    errors.extend(_redelivered_while_held(app))
    errors.extend(_run_on_after_a_connection_loss(app))
    errors.extend(_group_outlives_celery_limit(app))
    # Celery's fixup treats 0 like unset: it closes the connections around every task.
    if get_setting("RECORD") and not app.conf.get("CELERY_DB_REUSE_MAX"):
        from messagio.records import db_alias

        if connections[db_alias()].vendor != "sqlite":
            errors.append(
                Warning(
                    "Celery closes Django's database connections before and after every task "
                    "unless CELERY_DB_REUSE_MAX is set, so each messagio delivery opens a new "
                    "database connection (several times the cost of recording it).",
                    hint="Set CELERY_DB_REUSE_MAX = 500 in your settings (the connection is "
                    "then reused for 500 tasks; messagio reconnects if the database drops it).",
                    id="messagio.W006",
                )
            )
    return errors


@register(Tags.database)
def check_search_index(app_configs: Any = None, databases: Any = None, **kwargs: Any) -> list[Any]:
    """On PostgreSQL, once migration 0004 has run: the summary search has its index (the
    migration goes on without it when the user may not create pg_trgm)."""
    errors: list[Any] = []
    for alias in databases or ():
        connection = connections[alias]
        if connection.vendor != "postgresql" or not router.allow_migrate(alias, "messagio"):
            continue
        recorder = MigrationRecorder(connection)
        if ("messagio", "0004_summary_search_index") not in recorder.applied_migrations():
            continue  # migrating will create it
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(%s)",
                [SEARCH_INDEX],
            )
            row = cursor.fetchone()
        if row and row[0]:
            continue
        drop = f"DROP INDEX CONCURRENTLY {SEARCH_INDEX}; " if row else ""
        errors.append(
            Warning(
                f"The admin's search of event summaries has no index on the database "
                f"{alias!r} ({'invalid: an interrupted build' if row else 'missing'}): each "
                "search reads every summary, about 2 s at 1,000,000 events instead of 0.1 s.",
                hint="As a user who may create the pg_trgm extension (PostgreSQL 13+: the "
                f"CREATE privilege on the database), run: {drop}{SEARCH_INDEX_SQL} "
                "It takes about 70 MB per million events, and a little time per fire.",
                id="messagio.W005",
            )
        )
    return errors


def _run_on_after_a_connection_loss(app: Any) -> list[Any]:
    """W013: RabbitMQ hands the unacknowledged messages of a connection it lost to other
    workers at once; a worker whose connection blipped goes on running their listeners
    unless Celery cancels them, and the listener runs twice side by side."""
    if not is_amqp(app) or app.conf.worker_cancel_long_running_tasks_on_connection_loss:
        return []
    return [
        Warning(
            "The broker is RabbitMQ and CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_"
            "LOSS is off: when a worker's broker connection drops, RabbitMQ hands the messages "
            "it holds to other workers, while it goes on running their listeners; each runs "
            "twice side by side, and one run's outcome is discarded.",
            hint="Set CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = True (Celery "
            "6's default): the worker then stops them, recorded as lost attempts, and the "
            "worker that gets the message runs them again.",
            id="messagio.W013",
        )
    ]


def _retries_held_by_workers(app: Any, declared: dict[str, Any]) -> list[Any]:
    """W012: with quorum queues among CELERY_TASK_QUEUES, Celery delays a message with a
    countdown (every retry of messagio's) through RabbitMQ's native delayed delivery, but not
    for a queue bound to a direct exchange: the worker takes such a message at once and
    holds it until it is due, a process of a quorum queue's worker waiting on it."""
    if not any(
        (q.queue_arguments or {}).get("x-queue-type") == "quorum" for q in declared.values()
    ):
        return []
    direct = [
        name
        for name in sorted(_messagio_queues(app))
        if name in declared and getattr(declared[name].exchange, "type", "direct") == "direct"
    ]
    if not direct:
        return []
    return [
        Warning(
            f"The messagio queues {', '.join(direct)} are bound to direct exchanges while "
            "CELERY_TASK_QUEUES holds quorum queues: Celery cannot delay their retries in "
            "RabbitMQ (native delayed delivery), so a worker holds each retry until its "
            "delay has passed, a worker process of a quorum queue waiting on it.",
            hint=f'Bind them to topic exchanges, e.g. Queue("{direct[0]}", '
            f'Exchange("{direct[0]}", type="topic"), routing_key="{direct[0]}"); delete the '
            "direct exchange first: RabbitMQ cannot change an exchange's type.",
            id="messagio.W012",
        )
    ]


def _redelivery_timeout(app: Any) -> tuple[float, str] | None:
    """How long the broker lets a worker hold a message unacknowledged, and its name."""
    if is_redis(app):
        options = app.conf.broker_transport_options or {}
        seconds = float(options.get("visibility_timeout", REDIS_VISIBILITY_TIMEOUT))
        return seconds, "Redis's visibility_timeout"
    if is_amqp(app):
        return RABBITMQ_CONSUMER_TIMEOUT, "RabbitMQ's consumer_timeout (30 minutes by default)"
    return None


def _longest_holds() -> list[tuple[str, float]]:
    """How long a worker may hold a listener's message unacknowledged (messagio tasks ack
    late): a run up to its time limit, and a retry's countdown (Celery keeps a message with
    a countdown until it is due) plus that run. Per listener: a group's listeners run in one
    task, but summed, three listeners at the default limit would warn in every project."""
    from messagio.dispatch import listener_spec
    from messagio.registry import registry

    holds = []
    for subscription in registry.subscriptions():
        spec = listener_spec(subscription)
        run = float(spec["time_limit"] or 0)
        if run:
            holds.append((f"{spec['id']} may run for {run:g}s (its time limit)", run))
        else:
            holds.append((f"{spec['id']} may run with no time limit", math.inf))
        if spec["autoretry_for"] and spec["max_retries"]:
            held = spec["retry_delay"] + (run or math.inf)
            what = f"{held:g}s (its delay)" if run else "its delay and a run of no limit"
            holds.append((f"a retry of {spec['id']} is held for {what}", held))
    return holds


def _stuck_while_held() -> list[Any]:
    """W008: the relay presumes a worker dead once its delivery has been running (or waiting
    for its retry) for STUCK_TIMEOUT, and queues it again: a listener allowed to run longer
    then runs a second time alongside the first."""
    from messagio.dispatch import listener_spec
    from messagio.registry import registry

    if not get_setting("RECORD"):
        return []  # nothing is recorded, so nothing is requeued
    seconds = float(get_setting("STUCK_TIMEOUT"))
    over = []
    # Its clock runs from a run's start, then from a failure to its retry: each on its own.
    for subscription in registry.subscriptions():
        spec = listener_spec(subscription)
        run = spec["time_limit"]
        if not run:
            over.append(f"{spec['id']} has no time limit")
        elif run >= seconds:
            over.append(f"{spec['id']} may run for {run:g}s (its time limit)")
        if spec["autoretry_for"] and spec["max_retries"] and spec["retry_delay"] >= seconds:
            over.append(f"a retry of {spec['id']} waits {spec['retry_delay']:g}s (its delay)")
    if not over:
        return []
    shown = _first_three(over)
    return [
        Warning(
            f"{shown}; STUCK_TIMEOUT is {seconds:g}s, after which the relay takes the "
            "worker for dead and queues the delivery again while it may still run.",
            hint="Raise MESSAGIO['STUCK_TIMEOUT'] above the longest time limit and retry "
            "delay, or set or shorten those.",
            id="messagio.W008",
        )
    ]


def _first_three(items: list[str]) -> str:
    """What a warning names: the first three, and how many more."""
    return "; ".join(items[:3]) + (f"; and {len(items) - 3} more" if len(items) > 3 else "")


def _redelivered_while_held(app: Any) -> list[Any]:
    """W007: a message held longer than the broker waits is handed to a second worker while
    the first still runs it; that one finds the delivery running, takes its worker for
    dead, and runs the listener a second time alongside."""
    timeout = _redelivery_timeout(app)
    if timeout is None or invalid_settings():
        return []  # E003 tells what to fix first
    seconds, name = timeout
    over = [what for what, held in _longest_holds() if held >= seconds]
    if not over:
        return []
    shown = _first_three(over)
    ends = (
        "with no end (MAX_LOST_ATTEMPTS is None)"
        if get_setting("MAX_LOST_ATTEMPTS") is None
        else "and once MAX_LOST_ATTEMPTS runs are taken over it is recorded failed "
        "(WorkerLostTooOftenError) though they may have succeeded"
    )
    fix = (
        'raise it with CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": ...}'
        if is_redis(app)
        else "raise consumer_timeout in rabbitmq.conf (messagio cannot read it: then "
        'silence this warning with SILENCED_SYSTEM_CHECKS = ["messagio.W007"])'
    )
    return [
        Warning(
            f"{shown}: not less than {name} of {seconds:g}s, after which the broker hands "
            "the message to another worker while the first still holds it: the listener "
            f"runs again alongside, each time that passes, {ends}.",
            hint=f"Shorten the time limit or retry delay, or {fix} above the longest hold, "
            "with room for the other listeners of the same group (which run in one task) "
            "and for the time a message waits prefetched by a busy worker.",
            id="messagio.W007",
        )
    ]


def _group_outlives_celery_limit(app: Any) -> list[Any]:
    """W010: Celery's time limits apply to a whole messagio task, which runs a group of
    listeners one after the other: a hard limit kills the worker process in whichever
    listener runs then (its attempt recorded as lost, and run again), a soft one raises
    SoftTimeLimitExceeded in it (recorded as its failure)."""
    from messagio.dispatch import effective_priority, effective_queue, listener_spec
    from messagio.registry import registry

    task = app.tasks.get(DELIVER_TASK)
    # The task's own limit (CELERY_TASK_ANNOTATIONS) wins over the app's, as in a worker.
    limits = [
        (name, float(value))
        for name, value in (
            ("time limit", getattr(task, "time_limit", None) or app.conf.task_time_limit),
            (
                "soft time limit",
                getattr(task, "soft_time_limit", None) or app.conf.task_soft_time_limit,
            ),
        )
        if value
    ]
    if not limits or invalid_settings():
        return []
    name, seconds = min(limits, key=lambda limit: limit[1])  # the one a group meets first
    over = []
    for messagio_type in registry.messagio_types():
        groups: dict[tuple[int, Any], list[dict[str, Any]]] = {}
        for subscription in registry.subscriptions_for(messagio_type):
            key = (effective_priority(subscription), effective_queue(subscription))
            groups.setdefault(key, []).append(listener_spec(subscription))
        for specs in groups.values():
            total = sum(float(s["time_limit"]) if s["time_limit"] else math.inf for s in specs)
            if total >= seconds:
                ids = ", ".join(s["id"] for s in specs)
                took = "have no time limit" if total == math.inf else f"may take {total:g}s"
                over.append(
                    f"{messagio_type.get_name()}: {ids} {took} in one task, "
                    f"not less than Celery's {name} of {seconds:g}s"
                )
    if not over:
        return []
    shown = _first_three(over)
    return [
        Warning(
            f"{shown}. Celery's limit covers a whole messagio task, whose listeners run one "
            "after the other: it would stop the task in one of them.",
            hint="Raise CELERY_TASK_TIME_LIMIT / CELERY_TASK_SOFT_TIME_LIMIT above each "
            "group's total (messagio stops every listener at its own time_limit), or give "
            "messagio's task limits of its own: CELERY_TASK_ANNOTATIONS = "
            '{"messagio.tasks.deliver": {"time_limit": ..., "soft_time_limit": ...}}.',
            id="messagio.W010",
        )
    ]
