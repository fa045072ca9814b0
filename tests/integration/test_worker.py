"""Firing through a real Celery worker process, on the stack the environment names."""

import subprocess
import sys
import uuid

import pytest
from django.conf import settings

from messagio import MessageCenter
from messagio.brokers import is_amqp, is_redis
from messagio.models import Delivery
from messagio.tasks import DELIVER_TASK
from project.celery import app
from tests.hostile import WritesFile
from tests.integration.conftest import ROOT, process_env, purge_queue
from tests.polling import wait_for
from tests.testapp.messagio import (
    BacklogHigh,
    BacklogLow,
    Flaky,
    Ping,
    PlainPing,
    Unheard,
    WithModel,
)
from tests.testapp.models import Call
from tests.testapp.runtime_listeners import runtime_listener

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def new_token() -> str:
    return uuid.uuid4().hex


def calls(token: str) -> list[str]:
    return list(Call.objects.filter(token=token).values_list("listener", flat=True))


def wait_for_calls(token: str, count: int, timeout: float = 30) -> list[str]:
    return wait_for(
        lambda: len(calls(token)) >= count and calls(token),
        timeout=timeout,
        what=f"{count} listener calls for {token}",
    )


def test_the_readme_route_sends_messagio_tasks_to_the_messagio_queue():
    route = app.amqp.router.route({}, "messagio.tasks.deliver", args=(), kwargs={})
    assert route["queue"].name == settings.MESSAGIO_QUEUE


def test_a_worker_that_accepts_json_alone_never_unpickles_a_message(worker, tmp_path):
    # The demo project's setting, Celery's default: messagio's tasks need nothing else, and a
    # pickled message put on the queue by whoever can write to the broker runs no code.
    marker = tmp_path / "pwned"
    refused = "untrusted content of type pickle"
    before = worker.output().count(refused)

    app.send_task(
        DELIVER_TASK,
        args=(WritesFile(str(marker)),),
        serializer="pickle",
        queue=settings.MESSAGIO_QUEUE,
    )

    wait_for(lambda: worker.output().count(refused) > before, what="the worker to refuse it")
    assert not marker.exists()


def test_a_project_that_accepts_pickle_alone_runs_its_messagios(start_worker):
    # The original library's README sets CELERY_ACCEPT_CONTENT = ['pickle']: its workers
    # refuse JSON, so messagio's tasks travel as pickle there. Fired by a process of that
    # project too.
    pickle_alone = {"MESSAGIO_TEST_ACCEPT_CONTENT": "pickle"}
    purge_queue(settings.TEST_CRASH_QUEUE)
    worker = start_worker([settings.TEST_CRASH_QUEUE], concurrency=1, env=pickle_alone)
    token = new_token()
    Call.objects.create(token=token, listener="release")  # the slow listener returns at once
    fire = (
        "import django; django.setup(); from tests.testapp.messagio import SlowPair; "
        f"print(SlowPair({token!r}).fire().event_id)"
    )
    try:
        fired = subprocess.run(
            [sys.executable, "-c", fire],
            cwd=ROOT,
            env=process_env(pickle_alone),
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        event_id = fired.stdout.split()[-1]
        wait_for(
            lambda: Delivery.objects.filter(event_id=event_id, status="succeeded").count() == 2,
            what="both listeners to succeed",
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nworker:\n{worker.output()}") from None
    finally:
        worker.stop()  # it would refuse the crash queue's next messages
    assert calls(token) == ["release", "slow-started", "slow-finished", "after-slow"]


def test_a_dataclass_messagio_runs_all_its_listeners_in_subscription_order(worker):
    token = new_token()

    report = Ping(token).fire()

    # first, second, broken, third share priority and queue: one task, in order;
    # broken fails and the others still run.
    assert wait_for_calls(token, 5) == ["first", "second", "broken", "third", "of_many"]
    assert len(report.task_ids) == 1
    assert "broken listener fails on purpose" in worker.output()


def test_a_plain_class_messagio_reaches_a_listener_of_many_types(worker):
    token = new_token()
    PlainPing(token).fire()
    assert wait_for_calls(token, 1) == ["of_many"]
    assert Call.objects.get(token=token).note == "PlainPing"


def test_a_model_instance_travels_as_a_field(worker):
    token = new_token()
    obj = Call.objects.create(token="model-field", listener="none")
    WithModel(token, obj).fire()
    wait_for_calls(token, 1)
    assert Call.objects.get(token=token).note == f"Call:{obj.pk}"


def test_a_retried_listener_reruns_alone_until_it_succeeds(worker):
    token = new_token()
    Flaky(token, fail_times=2).fire()

    wait_for(lambda: calls(token).count("flaky") == 3, what="three attempts of flaky")
    assert calls(token).count("flaky_sibling") == 1
    assert "flaky fails 2 times" in worker.output()


def test_a_listener_calling_celerys_retry_fails_alone_and_the_group_is_not_sent_again(worker):
    # Celery's retry() would publish the whole group again under the same task id while it
    # runs: the listeners after it would run twice, one taken over from the other.
    from tests.testapp.messagio import RetriesItsTask

    token = new_token()
    report = RetriesItsTask(token).fire()

    def both_finished():
        found = list(Delivery.objects.filter(event_id=report.event_id).order_by("position"))
        return len(found) == 2 and all(d.finished_at for d in found) and found

    deliveries = wait_for(both_finished, what="both deliveries finished")
    retrying, after = deliveries
    assert (retrying.status, retrying.attempts) == (Delivery.Status.FAILED, 1)
    assert retrying.error_type == "messagio.exceptions.CeleryRetryRefusedError"
    assert "List the exception in the subscription's autoretry_for" in retrying.error
    assert (after.status, after.attempts) == (Delivery.Status.SUCCEEDED, 1)
    assert calls(token) == ["retries_its_task", "after_retries_its_task"]


def test_a_listener_subscribed_at_run_time_runs_in_a_worker_that_never_subscribed_it(worker):
    token = new_token()
    MessageCenter.singleton().subscribe(Unheard, runtime_listener)
    Unheard(token).fire()
    assert wait_for_calls(token, 1) == ["runtime_listener"]


def test_an_unsubscribed_listener_does_not_run(worker):
    from tests.testapp.messagio import broken, second

    center = MessageCenter.singleton()
    center.unsubscribe(Ping, second)
    center.unsubscribe(Ping, broken)
    token = new_token()
    Ping(token).fire()
    assert wait_for_calls(token, 3) == ["first", "third", "of_many"]


def test_sync_fire_runs_here_without_the_broker():
    token = new_token()
    ping = Ping(token)
    report = ping.fire(sync=True)
    assert calls(token) == ["first", "second", "broken", "third", "of_many"]
    assert ping.notes == ["first", "second", "third"]
    assert [o.listener_id for o in report.failed] == ["tests.testapp.messagio.broken"]


@pytest.mark.skipif(
    not (is_redis(app) or is_amqp(app)), reason="kombu's filesystem broker has no priorities"
)
def test_with_a_backlog_high_priority_runs_before_low_priority_queued_earlier(start_worker):
    token = new_token()
    for n in range(10):
        BacklogLow(token, n).fire()
    for n in range(10):
        BacklogHigh(token, n).fire()

    backlog_worker = start_worker([settings.TEST_PRIORITY_QUEUE], concurrency=1)
    try:
        order = wait_for_calls(token, 20)
    finally:
        backlog_worker.stop()

    assert order == ["high"] * 10 + ["low"] * 10
