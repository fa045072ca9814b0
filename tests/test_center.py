"""Message centers: sync fire, the in-process center, and choosing a center by setting."""

import subprocess
import sys
import textwrap
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from django.test import override_settings

from messagio import (
    AbstractMessageCenter,
    InProcessMessageCenter,
    MessageCenter,
    MessageProcessingError,
    Messagio,
    PayloadError,
    listen_to_message,
)
from messagio.center import get_message_center
from messagio.models import Event
from tests.routers import RecordsElsewhere

pytestmark = pytest.mark.django_db(transaction=True)

IN_PROCESS = {"MESSAGE_CENTER": "messagio.center.InProcessMessageCenter"}


@dataclass
class Shout(Messagio):
    text: str
    seen: list = field(default_factory=list)
    extra: object = None


calls: list[str] = []


@pytest.fixture(autouse=True)
def clear_calls():
    calls.clear()


def loud(msg: Shout) -> str:
    calls.append("loud")
    msg.seen.append("loud")
    return "LOUD"


def failing(msg: Shout) -> None:
    calls.append("failing")
    raise RuntimeError("failing on purpose")


def quiet(msg: Shout) -> None:
    calls.append("quiet")
    msg.seen.append("quiet")


def subscribe_all():
    for listener in (loud, failing, quiet):
        MessageCenter.singleton().subscribe(Shout, listener)


def test_sync_fire_runs_every_listener_in_order_on_the_very_object():
    subscribe_all()
    shout = Shout("hi")

    report = shout.fire(sync=True)

    assert calls == ["loud", "failing", "quiet"]
    assert shout.seen == ["loud", "quiet"]
    assert report.sync is True
    assert [o.listener_id for o in report.succeeded] == [
        "tests.test_center.loud",
        "tests.test_center.quiet",
    ]
    assert report.succeeded[0].result == "LOUD"
    assert [o.listener_id for o in report.failed] == ["tests.test_center.failing"]
    assert isinstance(report.failed[0].exception, RuntimeError)
    assert report.ok is False


def test_sync_fire_logs_failures(caplog):
    subscribe_all()
    Shout("hi").fire(sync=True)
    assert "listener tests.test_center.failing failed" in caplog.text
    assert "failing on purpose" in caplog.text


def test_sync_fire_raises_when_asked_after_running_everyone():
    subscribe_all()
    with pytest.raises(MessageProcessingError, match="tests.test_center.failing") as error:
        Shout("hi").fire(sync=True, raise_errors=True)
    assert calls == ["loud", "failing", "quiet"]
    assert error.value.failures[0][0] == "tests.test_center.failing"


def test_sync_raise_errors_setting_makes_sync_fire_raise():
    subscribe_all()
    with override_settings(MESSAGIO={"SYNC_RAISE_ERRORS": True}):
        with pytest.raises(MessageProcessingError):
            Shout("hi").fire(sync=True)


def test_sync_fire_retries_a_listener_per_its_policy():
    attempts = []

    def flaky(msg):
        attempts.append(1)
        if len(attempts) < 3:
            raise ConnectionError("not yet")

    MessageCenter.singleton().subscribe(Shout, flaky, autoretry_for=(ConnectionError,))
    report = Shout("hi").fire(sync=True)

    assert report.ok
    assert report.outcomes[0].attempts == 3


def test_sync_fire_gives_up_after_max_retries():
    attempts = []

    def always(msg):
        attempts.append(1)
        raise ConnectionError("never")

    MessageCenter.singleton().subscribe(
        Shout, always, autoretry_for=(ConnectionError,), max_retries=2
    )
    report = Shout("hi").fire(sync=True)

    assert len(attempts) == 3
    assert report.failed[0].attempts == 3


def test_an_exception_outside_autoretry_for_is_not_retried():
    attempts = []

    def wrong(msg):
        attempts.append(1)
        raise KeyError("no retry for this")

    MessageCenter.singleton().subscribe(Shout, wrong, autoretry_for=(ConnectionError,))
    Shout("hi").fire(sync=True)
    assert len(attempts) == 1


def test_message_center_send_sync_works_like_the_original():
    subscribe_all()
    report = MessageCenter.singleton().send(Shout("hi"), sync=True)
    assert len(report.outcomes) == 3


def test_sending_something_that_is_not_a_messagio_is_a_type_error():
    with pytest.raises(TypeError, match="Only Messagio instances"):
        MessageCenter.singleton().send("hello")


def test_async_fire_refuses_an_unpicklable_payload_before_publishing_or_recording():
    subscribe_all()
    with pytest.raises(PayloadError, match="'extra'"):
        Shout("hi", extra=threading.Lock()).fire()
    assert calls == []
    assert not Event.objects.exists()


def test_fire_refuses_an_oversized_payload_and_records_nothing():
    subscribe_all()
    with override_settings(MESSAGIO={"MAX_PAYLOAD_BYTES": 200}):
        with pytest.raises(PayloadError, match="MAX_PAYLOAD_BYTES"):
            Shout("x" * 1000).fire()
    assert calls == []
    assert not Event.objects.exists()


def test_the_setting_selects_the_in_process_center():
    with override_settings(MESSAGIO=IN_PROCESS):
        assert isinstance(get_message_center(), InProcessMessageCenter)
    assert type(get_message_center()) is MessageCenter


def test_the_in_process_center_runs_listeners_on_a_travelled_copy():
    subscribe_all()
    shout = Shout("hi")
    with override_settings(MESSAGIO=IN_PROCESS):
        report = shout.fire()

    assert calls == ["loud", "failing", "quiet"]
    assert shout.seen == []  # listeners got the copy a worker would get
    assert report.sync is False
    assert len(report.failed) == 1


def test_the_in_process_center_runs_higher_priorities_first():
    MessageCenter.singleton().subscribe(Shout, quiet, priority=1)
    MessageCenter.singleton().subscribe(Shout, loud, priority=10)
    with override_settings(MESSAGIO=IN_PROCESS):
        Shout("hi").fire()
    assert calls == ["loud", "quiet"]


def test_the_in_process_center_refuses_unpicklable_payloads_too():
    subscribe_all()
    with override_settings(MESSAGIO=IN_PROCESS), pytest.raises(PayloadError):
        Shout("hi", extra=lambda: None).fire()


def test_a_custom_center_is_a_real_extension_point():
    sent = []

    class ListCenter(AbstractMessageCenter):
        def send(self, messagio, sync=False, **options):
            sent.append(messagio)
            return self.send_sync(messagio)

    center = ListCenter.singleton()
    assert ListCenter.singleton() is center
    center.subscribe(Shout, quiet)
    center.send(Shout("hi"))
    assert calls == ["quiet"]
    assert len(sent) == 1


def test_a_bad_center_setting_names_the_problem():
    with override_settings(MESSAGIO={"MESSAGE_CENTER": "tests.test_center.Shout"}):
        with pytest.raises(TypeError, match="not a subclass of messagio.AbstractMessageCenter"):
            Shout("hi").fire()


def test_a_listener_of_the_readme_example_works_as_written():
    @listen_to_message(Shout, priority=10)
    def high_prio_listener(messagio: Shout):
        calls.append("high")

    report = Shout("hi").fire(sync=True)
    assert report.ok and calls == ["high"]


def test_without_records_a_fire_in_a_transaction_publishes_when_it_commits(monkeypatch):
    from django.db import transaction

    from messagio import records

    published: list[str] = []
    monkeypatch.setattr(
        records, "publish_all", lambda envelopes: published.extend(e["event"] for e in envelopes)
    )
    subscribe_all()
    with override_settings(MESSAGIO={"RECORD": False}):
        with pytest.raises(RuntimeError), transaction.atomic():
            Shout("rolled back").fire()
            raise RuntimeError("the caller's transaction fails")
        assert published == []
        with transaction.atomic():
            report = Shout("committed").fire()
            assert published == []
    assert published == [str(report.event_id)]
    assert not Event.objects.exists()


@pytest.mark.django_db(transaction=True, databases=["default", "records"])
def test_a_fire_joins_the_transaction_of_the_database_messagio_records_on(monkeypatch):
    from django.db import transaction

    from messagio import records

    published: list[str] = []
    monkeypatch.setattr(
        records, "publish_all", lambda envelopes: published.extend(e["event"] for e in envelopes)
    )
    subscribe_all()
    with override_settings(DATABASE_ROUTERS=[RecordsElsewhere()], MESSAGIO=IN_PROCESS):
        # The records are not in another database's transaction: they commit at once, and
        # the listeners run at once (a rollback there would leave them pending for ever).
        with transaction.atomic(using="default"):
            InProcessMessageCenter.singleton().send(Shout("now"))
            assert calls == ["loud", "failing", "quiet"]
        calls.clear()
        # In the records' database's transaction: on its commit, and not on its rollback.
        with pytest.raises(RuntimeError), transaction.atomic(using="records"):
            InProcessMessageCenter.singleton().send(Shout("rolled back"))
            raise RuntimeError("the caller's transaction fails")
        with transaction.atomic(using="records"):
            InProcessMessageCenter.singleton().send(Shout("committed"))
            assert calls == []
        assert calls == ["loud", "failing", "quiet"]
    # Without records, the caller's data is the default database's: its commit.
    with override_settings(DATABASE_ROUTERS=[RecordsElsewhere()], MESSAGIO={"RECORD": False}):
        with transaction.atomic(using="records"):
            Shout("not this one's").fire()
            assert len(published) == 1
        with transaction.atomic(using="default"):
            report = Shout("unrecorded").fire()
            assert len(published) == 1
        assert published[-1] == str(report.event_id)


def test_subscribe_takes_the_retry_policy_by_position_as_messagio_0x_did():
    def retried(msg: Shout) -> None: ...

    subscription = MessageCenter.singleton().subscribe(Shout, retried, 9, (KeyError,), 4, 2.5)

    assert (subscription.priority, subscription.autoretry_for) == (9, (KeyError,))
    assert (subscription.max_retries, subscription.default_retry_delay) == (4, 2.5)
    with pytest.raises(TypeError):
        MessageCenter.singleton().subscribe(Shout, retried, 9, (), 4, 2.5, "a-queue")


def test_a_fire_in_a_project_without_messagio_in_installed_apps_says_how_to_fix_it():
    # A project of its own, where messagio's models never loaded (here they have).
    script = textwrap.dedent(
        """
        from dataclasses import dataclass

        import django
        from django.conf import settings

        settings.configure(INSTALLED_APPS=[], DATABASES={
            "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}
        })
        django.setup()

        from messagio import Messagio

        @dataclass
        class Hello(Messagio):
            name: str

        for sync in (False, True):
            try:
                Hello("you").fire(sync=sync)
            except Exception as exc:
                print(type(exc).__name__, exc)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )

    lines = done.stdout.splitlines()
    assert len(lines) == 2, done.stderr
    for line in lines:
        assert line.startswith("ImproperlyConfigured messagio is not in INSTALLED_APPS")
        assert "run manage.py migrate" in line
