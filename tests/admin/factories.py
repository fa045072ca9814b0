"""Records and users for the admin tests: events made with the ORM as a fire leaves them,
people with and without permissions, and clients logged in as them."""

from __future__ import annotations

import datetime
import itertools
import uuid

from django.contrib.auth.models import Permission, User
from django.test import Client
from django.utils import timezone

from messagio.models import Attempt, Delivery, Event

PING = "tests.testapp.messagio.Ping"
LISTENERS = [
    "tests.testapp.messagio.first",
    "tests.testapp.messagio.second",
    "tests.testapp.messagio.broken",
    "tests.testapp.messagio.third",
]
ERROR_TYPE = "builtins.RuntimeError"
ERROR = "broken listener fails on purpose"
HOSTILE = "<script>alert(1)</script>"

_tokens = itertools.count(1)


def make_event(
    *statuses: str,
    messagio_type: str = PING,
    fired_at: datetime.datetime | None = None,
    summary: dict | None = None,
    state: str = Event.State.PUBLISHED,
    origin: str = Event.Origin.FIRE,
    listeners: list[str] | None = None,
    error_type: str = ERROR_TYPE,
    error: str = ERROR,
    waiting: int = 0,
) -> Event:
    """An event with one delivery per status, in subscription order, each with its attempt,
    and ``waiting`` more listeners without a delivery: published outside a transaction, the
    fire wrote none, and no worker has started their group yet."""
    # A second ago: its deliveries finished before any replay's snapshot taken by the test.
    fired_at = fired_at or timezone.now() - datetime.timedelta(seconds=1)
    token = f"token-{next(_tokens)}"
    event = Event.objects.create(
        messagio_type=messagio_type,
        fired_at=fired_at,
        payload=b"signed-pickle-never-read-by-the-admin",
        summary={"token": token, "notes": []} if summary is None else summary,
        origin=origin,
        state=state,
        published_at=fired_at if state == Event.State.PUBLISHED else None,
        listener_count=len(statuses) + waiting,
    )
    names = listeners or LISTENERS
    for position, status in enumerate(statuses):
        started = fired_at + datetime.timedelta(milliseconds=10)
        finished = started + datetime.timedelta(milliseconds=5 + position)
        done = status in (Delivery.Status.SUCCEEDED, Delivery.Status.FAILED)
        failed = status == Delivery.Status.FAILED
        delivery = Delivery.objects.create(
            event=event,
            position=position,
            messagio_type=messagio_type,
            listener=names[position % len(names)],
            import_path=names[position % len(names)].replace(".messagio.", ".messagio:"),
            status=status,
            attempts=1 if status != Delivery.Status.PENDING else 0,
            started_at=started if status != Delivery.Status.PENDING else None,
            finished_at=finished if done else None,
            duration_ms=5.0 + position if done else None,
            result="'first done'" if status == Delivery.Status.SUCCEEDED else "",
            error_type=error_type if failed else "",
            error=error if failed else "",
            traceback=f"Traceback (most recent call last):\n  ...\n{error_type}: {error}"
            if failed
            else "",
            task_id=str(uuid.uuid4()),
            worker="celery@test",
        )
        if status != Delivery.Status.PENDING:
            Attempt.objects.create(
                delivery=delivery,
                number=1,
                outcome={"succeeded": "succeeded", "failed": "failed"}.get(status, "retried"),
                started_at=started,
                finished_at=finished if done else None,
                duration_ms=delivery.duration_ms,
                result=delivery.result,
                error_type=delivery.error_type,
                error=delivery.error,
                traceback=delivery.traceback,
                task_id=delivery.task_id,
                worker=delivery.worker,
            )
    return event


def make_user(username: str, *codenames: str, superuser: bool = False, staff: bool = True) -> User:
    if superuser:
        return User.objects.create_superuser(username, f"{username}@example.com", "pw")
    user = User.objects.create_user(username, f"{username}@example.com", "pw", is_staff=staff)
    for codename in codenames:
        app_label, name = codename.split(".")
        user.user_permissions.add(
            Permission.objects.get(content_type__app_label=app_label, codename=name)
        )
    return user


VIEW = ("messagio.view_event", "messagio.view_delivery", "messagio.view_replay")
REPLAY = (*VIEW, "messagio.replay_delivery")


def client_for(user: User | None, **options) -> Client:
    client = Client(**options)
    if user is not None:
        client.force_login(user)
    return client
