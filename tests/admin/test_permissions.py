"""Who may see and who may replay: anonymous, staff without permissions, staff with view only,
staff with the replay permission, superusers; CSRF; POST only; a permission per messagio type."""

import re
from urllib.parse import urlencode

import pytest
from django.contrib.auth.models import Permission
from django.contrib.contenttypes.models import ContentType
from django.test import override_settings

from messagio.models import Event, Replay
from tests.admin.factories import PING, REPLAY, VIEW, client_for, make_event, make_user

pytestmark = pytest.mark.django_db

DELIVERIES = "/admin/messagio/delivery/"
EVENTS = "/admin/messagio/event/"
REPLAYS = "/admin/messagio/replay/"


@pytest.fixture
def records(failed_event):
    """The URLs of every screen and every replay, for a failed event."""
    broken = failed_event.deliveries.get(position=2)
    record = Replay.objects.create(reason="earlier")
    return {
        "event": failed_event,
        "broken": broken,
        "screens": [
            EVENTS,
            f"{EVENTS}{failed_event.pk}/change/",
            DELIVERIES,
            f"{DELIVERIES}{broken.pk}/change/",
            f"{DELIVERIES}failures/",
            f"{DELIVERIES}listeners/",
            "/admin/messagio/replay/",
            f"/admin/messagio/replay/{record.pk}/change/",
        ],
        "replays": [
            f"{EVENTS}{failed_event.pk}/replay/",
            f"{EVENTS}{failed_event.pk}/replay-failed/",
            f"{DELIVERIES}{broken.pk}/replay/",
            f"{DELIVERIES}failures/replay/",
            f"{EVENTS}{failed_event.pk}/publish-again/",
            f"/admin/messagio/replay/{record.pk}/stop/",
        ],
    }


def group_form(broken) -> dict:
    return {
        "listener": broken.listener,
        "messagio_type": broken.messagio_type,
        "error_type": broken.error_type,
        "reason": "fixed",
    }


def group_page(broken) -> str:
    """The replay page of the failure group of ``broken``."""
    key = {name: getattr(broken, name) for name in ("listener", "messagio_type", "error_type")}
    return f"{DELIVERIES}failures/group/?{urlencode(key)}"


def replay_forms(html: str) -> list[str]:
    return re.findall(r'<form method="post" action="([^"]*replay[^"]*)"', html)


# --- Anonymous and non-staff ----------------------------------------------------------------


def test_anonymous_visitors_are_sent_to_the_login_page_from_every_screen(client, records):
    for url in records["screens"] + records["replays"]:
        response = client.get(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith("/admin/login/?next="), url


def test_anonymous_replay_posts_are_sent_to_the_login_page(client, records):
    for url in records["replays"]:
        response = client.post(url, group_form(records["broken"]))
        assert response.status_code == 302, url
        assert response["Location"].startswith("/admin/login/"), url
    assert not Replay.objects.exclude(reason="earlier").exists()


def test_a_user_who_is_not_staff_is_sent_to_the_login_page_despite_permissions(records):
    client = client_for(make_user("outsider", *REPLAY, staff=False))

    for url in records["screens"]:
        assert client.get(url).status_code == 302, url


# --- Staff without permissions --------------------------------------------------------------


def test_staff_without_permissions_are_refused_every_screen(records):
    client = client_for(make_user("staff"))

    for url in records["screens"]:
        assert client.get(url).status_code == 403, url


def test_staff_without_permissions_are_refused_every_replay(records):
    client = client_for(make_user("staff"))

    for url in records["replays"]:
        assert client.post(url, group_form(records["broken"])).status_code == 403, url
    assert records["broken"].__class__.objects.get(pk=records["broken"].pk).status == "failed"


def test_staff_without_permissions_see_no_dashboard_links_on_the_index(records):
    html = client_for(make_user("staff")).get("/admin/").content.decode()

    assert "Listener registry" not in html


# --- Staff with view permissions only -------------------------------------------------------


def test_viewers_see_every_screen(viewer, records):
    client = client_for(viewer)

    for url in records["screens"]:
        assert client.get(url).status_code == 200, url


def test_viewers_see_no_replay_button_form_or_action(viewer, records):
    client = client_for(viewer)

    for url in records["screens"]:
        html = client.get(url).content.decode()
        assert replay_forms(html) == [], url
        assert "replay_selected" not in html, url
        assert "replay_failed_of_selected" not in html, url
        assert "Replay this group" not in html, url


def test_viewers_are_refused_every_replay(viewer, records):
    client = client_for(viewer)

    for url in records["replays"]:
        assert client.post(url, group_form(records["broken"])).status_code == 403, url
    assert not Replay.objects.exclude(reason="earlier").exists()


def test_a_groups_replay_page_needs_the_replay_permission(client, viewer, replayer, records):
    url = group_page(records["broken"])

    assert client.get(url)["Location"].startswith("/admin/login/?next=")
    assert client_for(viewer).get(url).status_code == 403
    assert client_for(replayer).get(url).status_code == 200


def test_viewers_cannot_run_the_replay_action(viewer, records):
    client = client_for(viewer)

    response = client.post(
        DELIVERIES,
        {"action": "replay_selected", "_selected_action": [str(records["broken"].pk)], "index": 0},
    )

    assert response.status_code == 200  # the list again: no action exists for a viewer
    assert not Replay.objects.exclude(reason="earlier").exists()
    records["broken"].refresh_from_db()
    assert records["broken"].status == "failed"


def test_viewers_cannot_delete_records(viewer, records):
    client = client_for(viewer)

    response = client.post(f"{EVENTS}{records['event'].pk}/delete/", {"post": "yes"})

    assert response.status_code == 403
    assert Event.objects.filter(pk=records["event"].pk).exists()


def test_staff_with_the_delete_permission_may_delete_an_event(records):
    codenames = (
        *VIEW,
        "messagio.delete_event",
        "messagio.delete_delivery",
        "messagio.delete_attempt",
    )
    client = client_for(make_user("janitor", *codenames))

    response = client.post(f"{EVENTS}{records['event'].pk}/delete/", {"post": "yes"})

    assert response.status_code == 302
    assert not Event.objects.filter(pk=records["event"].pk).exists()


# --- Staff with the replay permission, and superusers ---------------------------------------


def test_replayers_see_the_replay_buttons(replayer, records):
    client = client_for(replayer)

    html = client.get(f"{EVENTS}{records['event'].pk}/change/").content.decode()

    assert f"{EVENTS}{records['event'].pk}/replay-failed/" in replay_forms(html)


def test_replayers_see_the_replay_action(replayer, records):
    html = client_for(replayer).get(DELIVERIES).content.decode()

    assert '<option value="replay_selected">Replay selected deliveries</option>' in html


@pytest.mark.django_db(transaction=True)  # replay() runs as it commits
def test_replayers_may_replay_a_delivery(replayer, records):
    client = client_for(replayer)

    client.post(f"{DELIVERIES}{records['broken'].pk}/replay/")

    records["broken"].refresh_from_db()
    assert records["broken"].status == "pending"
    assert Replay.objects.get(requested_by=replayer).total == 1


def test_replayers_may_watch_replays_without_the_view_permission_of_replays(records):
    replayer = make_user("watcher", "messagio.view_delivery", "messagio.replay_delivery")
    record = Replay.objects.get()

    response = client_for(replayer).get(f"/admin/messagio/replay/{record.pk}/change/")

    assert response.status_code == 200


def test_superusers_may_replay_an_event(admin_client, superuser, records):
    admin_client.post(f"{EVENTS}{records['event'].pk}/replay-failed/")

    assert Replay.objects.get(requested_by=superuser).total == 1


# --- POST only, with CSRF -------------------------------------------------------------------


def test_a_get_on_a_replay_url_is_refused_with_405(admin_client, records):
    for url in records["replays"]:
        assert admin_client.get(url).status_code == 405, url
    assert not Replay.objects.exclude(reason="earlier").exists()


def test_a_replay_post_without_csrf_token_is_refused(superuser, records):
    client = client_for(superuser, enforce_csrf_checks=True)

    for url in records["replays"]:
        assert client.post(url, group_form(records["broken"])).status_code == 403, url
    assert not Replay.objects.exclude(reason="earlier").exists()


def test_a_replay_post_with_the_csrf_token_of_the_page_works(superuser, records):
    client = client_for(superuser, enforce_csrf_checks=True)
    page = client.get(f"{EVENTS}{records['event'].pk}/change/").content.decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)

    response = client.post(
        f"{EVENTS}{records['event'].pk}/replay-failed/", {"csrfmiddlewaretoken": token}
    )

    assert response.status_code == 302
    assert Replay.objects.exclude(reason="earlier").count() == 1


def test_the_replay_action_without_csrf_token_is_refused(superuser, records):
    client = client_for(superuser, enforce_csrf_checks=True)

    response = client.post(
        DELIVERIES,
        {
            "action": "replay_selected",
            "_selected_action": [str(records["broken"].pk)],
            "post": "yes",
            "reason": "x",
        },
    )

    assert response.status_code == 403
    assert not Replay.objects.exclude(reason="earlier").exists()


# --- A permission per messagio type ---------------------------------------------------------


@pytest.fixture
def ping_permission():
    """Replaying Pings needs testapp.replay_pings."""
    permission = Permission.objects.create(
        codename="replay_pings",
        name="Can replay pings",
        content_type=ContentType.objects.get(app_label="testapp", model="call"),
    )
    with override_settings(MESSAGIO={"REPLAY_PERMISSIONS": {PING: "testapp.replay_pings"}}):
        yield permission


def test_without_the_types_permission_the_event_page_offers_no_replay(
    replayer, records, ping_permission
):
    html = client_for(replayer).get(f"{EVENTS}{records['event'].pk}/change/").content.decode()

    assert replay_forms(html) == []
    assert "needs the permission testapp.replay_pings" in html


def test_without_the_types_permission_an_event_replay_is_refused_with_a_message(
    replayer, records, ping_permission
):
    response = client_for(replayer).post(
        f"{EVENTS}{records['event'].pk}/replay-failed/", follow=True
    )

    assert "You may not replay tests.testapp.messagio.Ping" in response.content.decode()
    assert not Replay.objects.exclude(reason="earlier").exists()


def test_without_the_types_permission_a_delivery_replay_is_refused(
    replayer, records, ping_permission
):
    client_for(replayer).post(f"{DELIVERIES}{records['broken'].pk}/replay/")

    records["broken"].refresh_from_db()
    assert records["broken"].status == "failed"


def test_without_the_types_permission_a_group_replay_is_refused(replayer, records, ping_permission):
    response = client_for(replayer).post(
        f"{DELIVERIES}failures/replay/", group_form(records["broken"]), follow=True
    )

    assert "You may not replay tests.testapp.messagio.Ping" in response.content.decode()
    assert not Replay.objects.exclude(reason="earlier").exists()


def test_without_the_types_permission_a_groups_replay_page_sends_back_with_a_message(
    replayer, records, ping_permission
):
    response = client_for(replayer).get(group_page(records["broken"]), follow=True)

    assert response.redirect_chain == [(f"{DELIVERIES}failures/", 302)]
    assert "You may not replay tests.testapp.messagio.Ping" in response.content.decode()


def test_without_the_types_permission_the_failures_page_offers_no_group_replay(
    replayer, records, ping_permission
):
    html = client_for(replayer).get(f"{DELIVERIES}failures/").content.decode()

    assert "Replay this group" not in html
    assert "needs the permission testapp.replay_pings" in html


def test_without_the_types_permission_the_action_skips_those_deliveries(
    replayer, records, ping_permission
):
    other = make_event("failed", messagio_type="tests.testapp.messagio.Flaky").deliveries.get()
    selection = [str(records["broken"].pk), str(other.pk)]

    response = client_for(replayer).post(
        DELIVERIES, {"action": "replay_selected", "_selected_action": selection, "index": 0}
    )

    html = response.content.decode()
    assert "1 delivery will be replayed" in html
    assert "1 delivery is skipped: you may not replay tests.testapp.messagio.Ping." in html


@pytest.mark.django_db(transaction=True)  # replay() runs as it commits
def test_with_the_types_permission_a_replayer_may_replay_it(records, ping_permission):
    user = make_user("payments", *REPLAY, "testapp.replay_pings")

    client_for(user).post(f"{DELIVERIES}{records['broken'].pk}/replay/")

    records["broken"].refresh_from_db()
    assert records["broken"].status == "pending"


@pytest.mark.django_db(transaction=True)  # replay() runs as it commits
def test_superusers_hold_every_types_permission(admin_client, records, ping_permission):
    admin_client.post(f"{DELIVERIES}{records['broken'].pk}/replay/")

    records["broken"].refresh_from_db()
    assert records["broken"].status == "pending"


def test_a_delivery_or_a_replay_cannot_be_deleted_even_by_a_superuser(admin_client, records):
    # A delivery gone from its event would read as waiting for a worker (and be run again by
    # "publish again"); a replay is the audit trail of who replayed what.
    delivery = records["broken"]
    replay = Replay.objects.create(reason="audit")

    for url in (f"{DELIVERIES}{delivery.pk}/delete/", f"{REPLAYS}{replay.pk}/delete/"):
        assert admin_client.post(url, {"post": "yes"}).status_code == 403
    assert delivery.event.deliveries.filter(pk=delivery.pk).exists()
    assert Replay.objects.filter(pk=replay.pk).exists()


def test_no_list_offers_to_delete_what_is_selected(admin_client, records):
    for url in (EVENTS, DELIVERIES, REPLAYS):
        form = admin_client.get(url).context["action_form"]
        assert "delete_selected" not in (dict(form.fields["action"].choices) if form else {})


def test_a_deliverys_page_offers_no_delete_link(admin_client, records):
    response = admin_client.get(f"{DELIVERIES}{records['broken'].pk}/change/")
    assert response.status_code == 200
    assert f"{records['broken'].pk}/delete/" not in response.content.decode()


def test_an_events_page_shows_its_deliveries_only_to_who_may_view_deliveries(records):
    event, broken = records["event"], records["broken"]
    page = f"{EVENTS}{event.pk}/change/"
    events_only = client_for(make_user("events-only", "messagio.view_event"))
    both = client_for(make_user("both", "messagio.view_event", "messagio.view_delivery"))

    shown = both.get(page).content.decode()
    hidden = events_only.get(page).content.decode()

    assert broken.error in shown
    assert broken.error not in hidden and broken.listener not in hidden
    assert "4 deliveries are recorded for this event" in hidden
    assert "messagio.view_delivery" in hidden


def test_a_deliverys_page_shows_the_payload_only_to_who_may_view_events(records):
    event, broken = records["event"], records["broken"]
    page = f"{DELIVERIES}{broken.pk}/change/"
    token = event.summary["token"]
    deliveries_only = client_for(make_user("deliveries-only", "messagio.view_delivery"))
    both = client_for(make_user("both", "messagio.view_event", "messagio.view_delivery"))

    assert token in both.get(page).content.decode()
    hidden = deliveries_only.get(page).content.decode()
    assert token not in hidden
    assert "needs the permission messagio.view_event" in hidden
