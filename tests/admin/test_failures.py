"""The Failures page: failed deliveries grouped; a group's page with its one replay form, and
the replay's progress."""

import datetime
import html as html_module
import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from messagio import tasks
from messagio.models import Delivery, Replay
from tests.admin.factories import ERROR_TYPE, HOSTILE, LISTENERS, PING, client_for, make_event

pytestmark = pytest.mark.django_db

FAILURES = "/admin/messagio/delivery/failures/"
GROUP = "/admin/messagio/delivery/failures/group/"
REPLAY_GROUP = "/admin/messagio/delivery/failures/replay/"
BROKEN = LISTENERS[2]


def groups(response) -> list[tuple[str, str, str, str]]:
    """(listener, type, error class, count) of each group row shown."""
    html = response.content.decode()
    return re.findall(
        r'<tr class="failure-group">\s*<td title="([^"]*)">.*?</td>\s*<td title="([^"]*)">.*?</td>'
        r'\s*<td title="([^"]*)">.*?</td>\s*<td><a href="[^"]*">(\d+)</a></td>',
        html,
        re.S,
    )


def group_key(listener=BROKEN, messagio_type=PING, error_type=ERROR_TYPE) -> dict:
    return {"listener": listener, "messagio_type": messagio_type, "error_type": error_type}


def group_form(listener=BROKEN, messagio_type=PING, error_type=ERROR_TYPE, **options) -> dict:
    return {**group_key(listener, messagio_type, error_type), "reason": "bug #12 fixed", **options}


@pytest.fixture
def sent(monkeypatch):
    calls = []
    monkeypatch.setattr(tasks.replay, "delay", lambda *args: calls.append(args))
    return calls


# --- The groups -----------------------------------------------------------------------------


def test_failed_deliveries_are_grouped_by_listener_type_and_error_class(admin_client):
    for _ in range(3):
        make_event("succeeded", "succeeded", "failed")
    make_event("succeeded", "succeeded", "failed", error_type="builtins.ValueError")

    response = admin_client.get(FAILURES)

    assert response.status_code == 200
    assert sorted(groups(response)) == [
        (BROKEN, PING, "builtins.RuntimeError", "3"),
        (BROKEN, PING, "builtins.ValueError", "1"),
    ]


def test_only_failed_deliveries_are_grouped(admin_client):
    make_event("succeeded", "running", "pending")

    response = admin_client.get(FAILURES)

    assert groups(response) == []
    assert "No failed delivery" in response.content.decode()


def test_the_most_recently_seen_group_comes_first(admin_client):
    now = timezone.now()
    make_event("failed", fired_at=now - datetime.timedelta(hours=5))
    make_event("succeeded", "failed", fired_at=now - datetime.timedelta(hours=1))

    response = admin_client.get(FAILURES)

    assert [group[0] for group in groups(response)] == [LISTENERS[1], LISTENERS[0]]


def test_a_group_shows_first_and_last_seen_and_a_sample_message(admin_client):
    make_event("failed", fired_at=datetime.datetime(2024, 3, 10, 12, tzinfo=datetime.UTC))
    make_event("failed", fired_at=datetime.datetime(2024, 3, 12, 12, tzinfo=datetime.UTC))

    html = admin_client.get(FAILURES).content.decode()

    assert "<td>March 10, 2024, noon</td>\n        <td>March 12, 2024, noon</td>" in html
    sample = re.search(r'delivery/([0-9a-f-]{36})/change/" class="messagio-pre">([^<]*)</a>', html)
    assert sample.group(2) == "broken listener fails on purpose"
    assert sample.group(1) in {str(pk) for pk in Delivery.objects.values_list("pk", flat=True)}


def test_a_group_links_to_its_failed_deliveries(admin_client, failed_event):
    html = admin_client.get(FAILURES).content.decode()

    assert (
        "/admin/messagio/delivery/?status__exact=failed&amp;listener=tests.testapp.messagio.broken"
        "&amp;messagio_type=tests.testapp.messagio.Ping&amp;error_type=builtins.RuntimeError"
    ) in html


def test_the_failures_page_costs_as_many_queries_for_thirty_groups_as_for_three(admin_client):
    def count() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert admin_client.get(FAILURES).status_code == 200
        return len(captured.captured_queries)

    for index in range(3):
        make_event("failed", error_type=f"errors.E{index}")
    admin_client.get(FAILURES)
    few = count()
    for index in range(3, 30):
        make_event("failed", error_type=f"errors.E{index}")

    assert count() == few


def test_only_the_most_recent_groups_are_shown_past_the_limit(admin_client, monkeypatch):
    monkeypatch.setattr("messagio_admin.queries.FAILURE_GROUP_LIMIT", 2)
    for index in range(3):
        make_event("failed", error_type=f"errors.E{index}")

    response = admin_client.get(FAILURES)

    assert len(groups(response)) == 2
    assert "Only the 2 most recently seen groups are shown." in response.content.decode()


def test_a_hostile_error_message_is_escaped_on_the_failures_page(admin_client):
    make_event("failed", error=HOSTILE, error_type=f"x.{HOSTILE}")

    html = admin_client.get(FAILURES).content.decode()

    assert HOSTILE not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_each_group_links_to_its_replay_page(admin_client, failed_event):
    html = admin_client.get(FAILURES).content.decode()

    assert (
        f'<a href="{GROUP}?listener=tests.testapp.messagio.broken'
        "&amp;messagio_type=tests.testapp.messagio.Ping&amp;error_type=builtins.RuntimeError"
        '" class="button">Replay this group</a>'
    ) in html


def test_the_failures_page_holds_no_replay_form_however_many_groups(admin_client):
    for index in range(30):
        make_event("failed", error_type=f"errors.E{index}")

    response = admin_client.get(FAILURES)

    html = response.content.decode()
    assert len(groups(response)) == 30
    assert html.count("Replay this group") == 30
    assert REPLAY_GROUP not in html
    assert 'name="reason"' not in html


# --- A group's replay page ------------------------------------------------------------------


def test_the_group_page_offers_one_replay_form_asking_reason_canary_rate_and_threshold(
    admin_client, failed_event
):
    response = admin_client.get(GROUP, group_key())

    html = response.content.decode()
    assert response.status_code == 200
    assert html.count('<form method="post" action=') == 1
    assert f'action="{REPLAY_GROUP}"' in html
    for field in ("reason", "canary", "rate", "max_failure_percent"):
        assert f'name="{field}"' in html
    for name, value in group_key().items():
        assert f'<input type="hidden" name="{name}" value="{value}"' in html
    assert "Replay 1 failed delivery" in html


def test_the_group_page_shows_the_count_dates_and_a_sample_of_the_group(admin_client):
    make_event("failed", fired_at=datetime.datetime(2024, 3, 10, 12, tzinfo=datetime.UTC))
    make_event("failed", fired_at=datetime.datetime(2024, 3, 12, 12, tzinfo=datetime.UTC))
    make_event("failed", error_type="builtins.ValueError")

    html = admin_client.get(GROUP, group_key(listener=LISTENERS[0])).content.decode()

    assert re.search(r"failed deliveries</th><td><a href=\"[^\"]*\">2</a>", html)
    assert "March 10, 2024, noon" in html
    assert "March 12, 2024, noon" in html
    assert "broken listener fails on purpose" in html
    assert "Replay 2 failed deliveries" in html


def test_the_group_page_of_a_group_with_nothing_left_sends_back_to_the_failures(admin_client):
    make_event("succeeded")

    response = admin_client.get(GROUP, group_key(), follow=True)

    assert response.redirect_chain == [(FAILURES, 302)]
    assert "no failed delivery left to replay" in response.content.decode()


def test_the_group_page_without_a_group_sends_back_to_the_failures(admin_client, failed_event):
    response = admin_client.get(GROUP, follow=True)

    assert response.redirect_chain == [(FAILURES, 302)]
    assert "Choose a group to replay on the Failures page." in response.content.decode()


def test_the_group_page_costs_as_many_queries_for_a_big_group_as_for_a_small_one(admin_client):
    def count() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert admin_client.get(GROUP, group_key()).status_code == 200
        return len(captured.captured_queries)

    make_event("failed", "failed", "failed")
    admin_client.get(GROUP, group_key())
    few = count()
    for _ in range(20):
        make_event("failed", "failed", "failed")

    assert count() == few


def test_a_group_is_replayed_from_the_failures_page_through_its_page_with_the_csrf_token(
    superuser, failed_event, sent, django_capture_on_commit_callbacks
):
    client = client_for(superuser, enforce_csrf_checks=True)
    failures = client.get(FAILURES).content.decode()
    link = html_module.unescape(re.search(r'<a href="([^"]+)" class="button">', failures)[1])
    page = client.get(link).content.decode()
    form = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', page))

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(REPLAY_GROUP, {**form, "reason": "bug #12 fixed"})

    record = Replay.objects.get()
    assert response.status_code == 302
    assert (record.reason, record.total, record.requested_by) == ("bug #12 fixed", 1, superuser)
    assert record.requested_by_name == superuser.username
    assert [args[:2] for args in sent] == [(record.pk, {"status": "failed", **group_key()})]


def running_replay_of_the_group(**fields) -> Replay:
    """A replay of the broken listener's group, still running (as the admin records it)."""
    from messagio_admin.failures import describe_group

    return Replay.objects.create(description=describe_group(**group_key()), **fields)


def test_the_group_page_warns_of_a_replay_of_the_group_still_running(
    admin_client, superuser, failed_event
):
    running = running_replay_of_the_group(requested_by=superuser)
    Replay.objects.create(description=running.description, state=Replay.State.FINISHED)
    Replay.objects.create(description="failed deliveries of another group")

    html = admin_client.get(GROUP, group_key()).content.decode()

    warnings = re.findall(r'<p class="errornote messagio-running-replay">(.*?)</p>', html, re.S)
    assert len(warnings) == 1
    link = f'<a href="/admin/messagio/replay/{running.pk}/change/">Replay #{running.pk}</a>'
    assert link in warnings[0]
    assert "by root, is still running" in warnings[0]
    assert f'<input type="hidden" name="warned" value="{running.pk}">' in html


def test_the_group_page_without_a_replay_running_warns_of_none(admin_client, failed_event):
    running_replay_of_the_group(state=Replay.State.STOPPED)

    html = admin_client.get(GROUP, group_key()).content.decode()

    assert "messagio-running-replay" not in html


def test_a_group_replay_started_since_its_page_was_shown_is_warned_of_first(
    admin_client, failed_event, sent, django_capture_on_commit_callbacks
):
    # The form posted twice (a double click): the second finds the first running.
    with django_capture_on_commit_callbacks(execute=True):
        admin_client.post(REPLAY_GROUP, group_form(warned=""))
        second = admin_client.post(REPLAY_GROUP, group_form(warned=""))

    first = Replay.objects.get()
    assert second.status_code == 409
    assert f"Replay #{first.pk}</a> of this group" in second.content.decode()
    assert len(sent) == 1


def test_a_group_replay_warned_of_a_running_one_starts_when_posted_again(
    admin_client, failed_event, sent, django_capture_on_commit_callbacks
):
    running = running_replay_of_the_group()

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(REPLAY_GROUP, group_form(warned=str(running.pk)))

    assert response.status_code == 302
    assert Replay.objects.count() == 2
    assert len(sent) == 1


# --- Replaying a group ----------------------------------------------------------------------


def test_replaying_a_group_records_the_replay_with_who_why_and_how(
    admin_client, superuser, failed_event, sent, django_capture_on_commit_callbacks
):
    before = timezone.now()
    with django_capture_on_commit_callbacks(execute=True):
        admin_client.post(
            REPLAY_GROUP, group_form(canary="5", rate="2.5", max_failure_percent="20")
        )

    record = Replay.objects.get()
    assert (record.source, record.requested_by, record.reason) == (
        "admin",
        superuser,
        "bug #12 fixed",
    )
    assert (record.canary, record.rate, record.max_failure_rate) == (5, 2.5, 0.2)
    assert record.total == 1
    assert record.snapshot_at >= before
    assert "broken" in record.description


def test_replaying_a_group_sends_the_replay_task_with_the_group_filter(
    admin_client, failed_event, sent, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        admin_client.post(REPLAY_GROUP, group_form())

    record = Replay.objects.get()
    assert [args[:2] for args in sent] == [
        (
            record.pk,
            {
                "status": "failed",
                "listener": BROKEN,
                "messagio_type": PING,
                "error_type": ERROR_TYPE,
            },
        )
    ]


def test_replaying_a_group_shows_the_replay_progress_page(
    admin_client, failed_event, sent, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(REPLAY_GROUP, group_form(), follow=True)

    record = Replay.objects.get()
    assert response.redirect_chain == [(f"/admin/messagio/replay/{record.pk}/change/", 302)]
    html = response.content.decode()
    assert f"Replay #{record.pk} started: 1 failed delivery goes to a worker." in html
    assert "0 / 1" in html
    assert 'http-equiv="refresh"' in html


def test_the_replay_task_of_a_group_requeues_only_that_group(
    admin_client, sent, django_capture_on_commit_callbacks
):
    event = make_event("failed", "succeeded", "failed")
    make_event("failed", error_type="builtins.ValueError")
    with django_capture_on_commit_callbacks(execute=True):
        admin_client.post(REPLAY_GROUP, group_form(listener=LISTENERS[0]))

    # What the relay would send again, were the worker that runs it lost.
    assert Replay.objects.get().delivery_filter == sent[0][1]
    tasks.replay.apply(args=sent[0])

    record = Replay.objects.get()
    assert (record.state, record.queued, record.total) == ("finished", 1, 1)
    assert event.deliveries.get(position=0).status == "pending"
    assert event.deliveries.get(position=2).status == "failed"


def test_the_replay_page_says_where_a_replay_stopped_itself(admin_client):
    record = Replay.objects.create(
        state=Replay.State.STOPPED,
        total=100,
        queued=10,
        stopped_reason="canary: 5 of 5 replayed deliveries failed again",
    )

    html = admin_client.get(f"/admin/messagio/replay/{record.pk}/change/").content.decode()

    assert "canary: 5 of 5 replayed deliveries failed again" in html
    assert "10 / 100" in html
    assert 'http-equiv="refresh"' not in html


def test_a_group_replay_needs_a_reason(admin_client, failed_event, sent):
    response = admin_client.post(REPLAY_GROUP, group_form(reason="", canary="5"))

    html = response.content.decode()
    assert response.status_code == 400
    assert "This field is required." in html
    # The group's page again, the form as it was posted.
    assert "Replay 1 failed delivery" in html
    assert '<input type="hidden" name="listener" value="tests.testapp.messagio.broken"' in html
    assert 'name="canary" value="5"' in html
    assert not Replay.objects.exists()


def test_a_group_replay_refuses_a_failure_rate_above_100_percent(admin_client, failed_event, sent):
    response = admin_client.post(REPLAY_GROUP, group_form(max_failure_percent="150"))

    assert response.status_code == 400
    assert not Replay.objects.exists()


def test_replaying_a_group_with_nothing_left_records_nothing(admin_client, sent):
    make_event("succeeded")

    response = admin_client.post(REPLAY_GROUP, group_form(), follow=True)

    assert "no failed delivery left to replay" in response.content.decode()
    assert not Replay.objects.exists()
    assert sent == []


def test_the_replays_list_shows_state_progress_and_reason(admin_client):
    Replay.objects.create(reason="bug #12 fixed", total=4, queued=2, description="group x")

    html = admin_client.get("/admin/messagio/replay/").content.decode()

    assert "bug #12 fixed" in html
    assert "2 / 4" in html
    assert "running" in html
