"""messagio's settings: ``settings.MESSAGIO`` merged over :data:`DEFAULTS`, read at call time.

This is the only module that reads Django settings for messagio. Values are cached until
Django's ``setting_changed`` signal fires, so ``override_settings(MESSAGIO=...)`` works in tests.
"""

from __future__ import annotations

from typing import Any

from django.core.signals import setting_changed
from django.dispatch import receiver

from messagio.validation import (
    DAYS_AT_MOST,
    SECONDS_AT_MOST,
    Check,
    amount,
    flag,
    one_of,
    text,
    whole,
)

#: Documented defaults; every key of ``settings.MESSAGIO`` must be one of these.
DEFAULTS: dict[str, Any] = {
    # Dotted path of the AbstractMessageCenter subclass that ``Messagio.fire()`` uses.
    "MESSAGE_CENTER": "messagio.center.MessageCenter",
    # Import every app's listeners in AppConfig.ready() (workers never import urls.py).
    "AUTODISCOVER": True,
    # Priority of a subscription that names none (messagio.const.TASK_PRIORITY.REGULAR).
    "DEFAULT_PRIORITY": 5,
    # Queue of a subscription that names none; None lets CELERY_TASK_ROUTES decide.
    "DEFAULT_QUEUE": None,
    # max_retries of a subscription with autoretry_for but no max_retries (Celery's default).
    "DEFAULT_MAX_RETRIES": 3,
    # Seconds before a retry when the subscription gives no default_retry_delay (Celery's default).
    "DEFAULT_RETRY_DELAY": 180.0,
    # How priorities reach the broker: "auto" (by broker URL), "inverted" (0 is highest, Redis)
    # or "direct" (higher is more important, RabbitMQ).
    "BROKER_PRIORITY": "auto",
    # Seconds a listener may run in a worker before it is stopped and recorded as timed out
    # (a subscription's time_limit overrides it); None sets no limit.
    "DEFAULT_TIME_LIMIT": 600.0,
    # Seconds a delivery may stay running (or retrying) before the relay presumes its worker
    # dead and queues it again; keep it above your longest time limit.
    "STUCK_TIMEOUT": 3600.0,
    # How many attempts of a delivery may be lost with their worker (killed by the out-of-memory
    # killer, a crash in native code) before it is recorded failed instead of run again: a
    # listener that kills every worker it runs on would otherwise loop through them for ever.
    # Counted per replay; None sets no limit.
    "MAX_LOST_ATTEMPTS": 3,
    # fire(sync=True), and the InProcessMessageCenter's fire() outside a transaction, raise
    # MessageProcessingError when a listener fails, instead of reporting it.
    "SYNC_RAISE_ERRORS": False,
    # Largest pickled messagio accepted by fire(), in bytes.
    "MAX_PAYLOAD_BYTES": 512 * 1024,
    # Key of the payload signatures; None derives one from settings.SECRET_KEY (and accepts
    # SECRET_KEY_FALLBACKS).
    "SIGNING_KEY": None,
    # Former SIGNING_KEYs still accepted when verifying, for key rotation.
    "SIGNING_KEY_FALLBACKS": [],
    # Record every fire (Event), delivery and attempt in the database. Off, messagio runs
    # without a database: nothing is remembered, the relay and replay have nothing to work on.
    "RECORD": True,
    # On PostgreSQL, commit the records of published fires and of deliveries with
    # synchronous_commit off: a write lost in a database crash is covered (the published
    # message recreates a fire's records; a lost outcome makes the delivery run again).
    "ASYNC_COMMIT": True,
    # On PostgreSQL (psycopg 3), have the server prepare messagio's own statements (the fire's
    # INSERT, a worker's claim and finish) once per connection instead of planning them on
    # every run. Turn off behind a pooler that cannot keep prepared statements (PgBouncer in
    # transaction mode before 1.21, or with max_prepared_statements = 0).
    "PREPARED_STATEMENTS": True,
    # fire() raises when the broker cannot be reached, instead of leaving the Event for the relay.
    "RAISE_ON_PUBLISH_ERROR": False,
    # Seconds between runs of the relay (a django-celery-beat PeriodicTask made by migrate);
    # 1 or more, rounded to whole seconds.
    "RELAY_INTERVAL": 30,
    # Seconds an Event may stay recorded-not-published before the relay publishes it.
    "RELAY_GRACE": 10,
    # Seconds after which a publisher's claim on an Event is presumed dead and the relay retakes
    # it; also how long the periodic relay leaves an Event the broker refused on its own.
    "PUBLISH_CLAIM_TIMEOUT": 300,
    # Seconds what a published event's messages carry must have waited for a worker, with
    # nothing of it running, before its admin page offers to publish it again (a message the
    # broker lost). Choose more than your queues ever take: a copy published while the
    # original still waits in a backlog may run a group's listeners out of order if the two
    # overlap (each listener still runs once).
    "PUBLISH_AGAIN_AFTER": 600,
    # Days succeeded / failed records are kept by the prune task (replay records: once nothing
    # they ran is left, after the failed days); None keeps them forever.
    "RETAIN_SUCCEEDED_DAYS": 30,
    "RETAIN_FAILED_DAYS": 90,
    # Events deleted per batch (with their deliveries and attempts) by the prune task and
    # messagio_prune.
    "PRUNE_BATCH_SIZE": 1000,
    # Seconds between prune runs (a django-celery-beat PeriodicTask made by migrate); 1 or
    # more, rounded to whole seconds.
    "PRUNE_INTERVAL": 3600,
    # Create or update the relay and prune PeriodicTasks on migrate.
    "SCHEDULE_PERIODIC_TASKS": True,
    # Further permissions needed to replay chosen messagio types, beyond
    # messagio.replay_delivery: {"shop.events.PaymentFailed": "shop.replay_payments"}.
    "REPLAY_PERMISSIONS": {},
    # Longest listener result repr and traceback kept in a Delivery / Attempt, in characters.
    "RESULT_MAX_CHARS": 2000,
    "TRACEBACK_MAX_CHARS": 20000,
}

_cache: dict[str, Any] | None = None

#: A periodic task's runs expire after this many of its intervals (PeriodicTask.expire_seconds).
EXPIRES_AFTER_RUNS = 10
#: The longest interval whose expiry django-celery-beat's 32-bit columns hold.
INTERVAL_AT_MOST = (2**31 - 1) // EXPIRES_AFTER_RUNS


def _given() -> dict[str, Any]:
    """``settings.MESSAGIO`` as the project gives it (a dict, or nothing)."""
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured

    given = getattr(settings, "MESSAGIO", None) or {}
    if not isinstance(given, dict):
        raise ImproperlyConfigured(
            f"settings.MESSAGIO must be a dict of messagio's settings by name, e.g. "
            f'MESSAGIO = {{"RELAY_INTERVAL": 30}}, not a {type(given).__name__}'
        )
    return given


def get_settings() -> dict[str, Any]:
    """Return the effective settings, ``settings.MESSAGIO`` over :data:`DEFAULTS`."""
    global _cache
    if _cache is None:
        merged = dict(DEFAULTS)
        merged.update(_given())
        _cache = merged
    return _cache


def get_setting(name: str) -> Any:
    """Return one messagio setting by name (a key of :data:`DEFAULTS`)."""
    if name not in DEFAULTS:
        raise KeyError(f"Unknown messagio setting {name!r}; known: {', '.join(sorted(DEFAULTS))}")
    return get_settings()[name]


def unknown_settings() -> list[str]:
    """Keys of ``settings.MESSAGIO`` that messagio does not know (for a system check)."""
    return sorted(set(_given()) - set(DEFAULTS))


def _keys(value: Any) -> str | None:
    if isinstance(value, (list, tuple)) and all(isinstance(k, (str, bytes)) and k for k in value):
        return None
    return "a list of non-empty strings"


def _permissions(value: Any) -> str | None:
    if isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        return None
    return 'a dict of messagio type to permission, e.g. {"shop.events.Paid": "shop.replay_paid"}'


#: What each setting takes: a check returning what it should be, or None when it is fine.
VALID: dict[str, Check] = {
    "MESSAGE_CENTER": text(),
    "AUTODISCOVER": flag,
    "DEFAULT_PRIORITY": lambda value: (
        whole(0)(value)
        or (None if value <= 10 else "a whole number from 0 to 10 (messagio.TASK_PRIORITY)")
    ),
    "DEFAULT_QUEUE": text(none="let CELERY_TASK_ROUTES decide"),
    "DEFAULT_MAX_RETRIES": whole(0),
    "DEFAULT_RETRY_DELAY": amount("a number of seconds", zero=True, most=SECONDS_AT_MOST),
    "BROKER_PRIORITY": one_of("auto", "inverted", "direct"),
    "DEFAULT_TIME_LIMIT": amount("a number of seconds", none="no limit", most=SECONDS_AT_MOST),
    "STUCK_TIMEOUT": amount("a number of seconds", most=SECONDS_AT_MOST),
    "MAX_LOST_ATTEMPTS": whole(1, none="no limit"),
    "SYNC_RAISE_ERRORS": flag,
    "MAX_PAYLOAD_BYTES": whole(1),
    "SIGNING_KEY": text(none="derived from SECRET_KEY"),
    "SIGNING_KEY_FALLBACKS": _keys,
    "RECORD": flag,
    "ASYNC_COMMIT": flag,
    "PREPARED_STATEMENTS": flag,
    "RAISE_ON_PUBLISH_ERROR": flag,
    # django-celery-beat's intervals count whole seconds, 1 or more, in a 32-bit column.
    "RELAY_INTERVAL": amount("a number of seconds", least=1, most=INTERVAL_AT_MOST),
    "RELAY_GRACE": amount("a number of seconds", zero=True, most=SECONDS_AT_MOST),
    "PUBLISH_CLAIM_TIMEOUT": amount("a number of seconds", most=SECONDS_AT_MOST),
    "PUBLISH_AGAIN_AFTER": amount("a number of seconds", zero=True, most=SECONDS_AT_MOST),
    "RETAIN_SUCCEEDED_DAYS": amount(
        "a number of days", zero=True, none="keep forever", most=DAYS_AT_MOST
    ),
    "RETAIN_FAILED_DAYS": amount(
        "a number of days", zero=True, none="keep forever", most=DAYS_AT_MOST
    ),
    "PRUNE_BATCH_SIZE": whole(1),
    "PRUNE_INTERVAL": amount("a number of seconds", least=1, most=INTERVAL_AT_MOST),
    "SCHEDULE_PERIODIC_TASKS": flag,
    "REPLAY_PERMISSIONS": _permissions,
    "RESULT_MAX_CHARS": whole(1),
    "TRACEBACK_MAX_CHARS": whole(1),
}


def invalid_settings() -> list[tuple[str, Any, str]]:
    """(name, value, what it should be) for each setting of ``settings.MESSAGIO`` whose value
    messagio cannot use (for a system check: a typo here otherwise shows up as a worker or a
    relay that quietly does the wrong thing)."""
    given = _given()
    problems = []
    for name, value in given.items():
        check = VALID.get(name)
        expected = check(value) if check else None
        if expected:
            problems.append((name, value, expected))
    return problems


@receiver(setting_changed)
def _reset_cache(*, setting: str, **kwargs: Any) -> None:
    global _cache
    if setting in ("MESSAGIO", "SECRET_KEY"):
        _cache = None
