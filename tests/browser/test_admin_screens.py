"""messagio_admin in a real browser: every screen as a person sees it, and the on-call story
(a failure found on the Failures page, the fix deployed, the group replayed on a real worker).

Headless Debian Chromium (/usr/bin/chromium) driven by Playwright's sync API against
pytest-django's live server. Screenshots land in test-artifacts/screenshots/ (git-ignored).
"""

import re
import uuid
from pathlib import Path

import pytest

from tests.browser.conftest import CHROMIUM, STEP_TIMEOUT_MS

if not Path(CHROMIUM).exists():
    pytest.skip(
        f"no Chromium at {CHROMIUM} (apt-get install chromium; .ci/run does)",
        allow_module_level=True,
    )
try:
    from playwright.sync_api import expect
except ImportError as error:
    pytest.skip(
        f"playwright does not import ({error}); pip install -r requirements.txt",
        allow_module_level=True,
    )

from messagio.models import Delivery, Replay  # noqa: E402
from tests.admin.factories import VIEW, make_event, make_user  # noqa: E402
from tests.polling import wait_for  # noqa: E402
from tests.testapp.messagio import Fixable  # noqa: E402
from tests.testapp.models import Call  # noqa: E402

pytestmark = [
    pytest.mark.browser,
    pytest.mark.integration,
    pytest.mark.django_db(transaction=True),
]

FIXABLE = "tests.testapp.messagio.fixable"
BROKEN = "tests.testapp.messagio.broken"


def test_a_superuser_logs_in_and_sees_every_screen(screen):
    make_user("root", superuser=True)
    event = make_event("succeeded", "succeeded", "failed", "succeeded")
    Replay.objects.create(reason="bug #12 fixed", total=4, queued=2, description="group x")
    page = screen.page
    screen.name = "superuser"

    screen.log_in("root")
    screen.assert_styled()
    links = page.locator("#content-main")
    expect(links.get_by_role("link", name="Events and overview")).to_be_visible()
    expect(links.get_by_role("link", name="Listener registry")).to_be_visible()
    screen.screenshot("1-index")

    # Events, with the overview on top.
    links.get_by_role("link", name="Events and overview").click()
    expect(page.locator("#messagio-overview")).to_be_visible()
    expect(page.locator("#messagio-overview svg.messagio-chart")).to_be_visible()
    badge = page.locator("#result_list .messagio-badge.messagio-failed")
    expect(badge).to_have_text("3/4 ok, 1 failed")
    # messagio_admin.css is served too: its badges are rounded.
    assert badge.evaluate("element => getComputedStyle(element).borderTopLeftRadius") == "8px"
    expect(page.locator("#result_list tbody tr")).to_have_count(1)
    screen.assert_styled()
    screen.screenshot("2-events")

    # The event: its payload summary and its deliveries in subscription order.
    page.locator("#result_list tbody tr a[href*='/change/']").first.click()
    page.wait_for_url(re.compile(rf".*/admin/messagio/event/{event.pk}/change/.*"))
    deliveries = page.locator("#messagio-deliveries tr[id^=delivery-]")
    expect(deliveries).to_have_count(4)
    expect(deliveries.nth(2).locator(".messagio-badge")).to_have_text("failed")
    expect(deliveries.nth(2)).to_contain_text("RuntimeError")
    expect(deliveries.nth(0).locator(".messagio-badge")).to_have_text("succeeded")
    expect(page.locator(".messagio-summary")).to_contain_text(event.summary["token"])
    expect(
        page.locator(".messagio-actions input[value='Replay failed deliveries']")
    ).to_be_visible()
    screen.screenshot("3-event")

    # Deliveries.
    screen.goto("/admin/messagio/delivery/")
    rows = page.locator("#result_list tbody tr")
    expect(rows).to_have_count(4)
    expect(page.locator("#result_list .messagio-badge.messagio-failed")).to_have_text("failed")
    expect(page.locator("select[name=action] option[value=replay_selected]")).to_have_count(1)
    screen.screenshot("4-deliveries")

    # Failures: one group, the broken listener's RuntimeError.
    page.locator("#content-main .object-tools").get_by_role("link", name="Failures").click()
    groups = page.locator("#failure-groups tr.failure-group")
    expect(groups).to_have_count(1)
    expect(groups.locator(f"td[title='{BROKEN}']")).to_have_text("broken")
    expect(groups).to_contain_text("RuntimeError")
    expect(groups).to_contain_text("broken listener fails on purpose")
    expect(groups.get_by_role("link", name="Replay this group")).to_be_visible()
    screen.screenshot("5-failures")

    # The listener registry: Ping's listeners in subscription order, with the failure counted.
    page.locator(".object-tools").get_by_role("link", name="Listener registry").click()
    ping = page.locator(
        ".messagio-type", has=page.locator("h2[title='tests.testapp.messagio.Ping']")
    )
    expect(ping).to_have_count(1)
    listeners = ping.locator("tbody tr")
    expect(listeners).to_have_count(5)
    expect(listeners.nth(2)).to_contain_text("broken")
    expect(page.locator("#orphans")).to_be_visible()
    expect(page.locator("#unheard")).to_contain_text("Unheard")
    screen.screenshot("6-listeners")

    # Replays.
    screen.goto("/admin/messagio/replay/")
    replays = page.locator("#result_list tbody tr")
    expect(replays).to_have_count(1)
    expect(replays).to_contain_text("bug #12 fixed")
    expect(replays).to_contain_text("2 / 4")
    expect(replays.locator(".messagio-badge")).to_have_text("running")
    screen.screenshot("7-replays")

    screen.assert_clean()


def test_on_call_finds_a_failure_deploys_the_fix_and_replays_it_from_the_failures_page(
    screen, worker
):
    token = uuid.uuid4().hex
    report = Fixable(token).fire()
    wait_for(
        lambda: Delivery.objects.filter(event_id=report.event_id, status="failed").exists(),
        what="the Fixable delivery to fail on the worker",
    )
    make_user("oncall", superuser=True)
    page = screen.page
    screen.name = "on-call"

    screen.log_in("oncall")
    page.locator("#content-main").get_by_role("link", name="Failures").click()
    group = page.locator(
        "#failure-groups tr.failure-group", has=page.locator(f"td[title='{FIXABLE}']")
    )
    expect(group).to_have_count(1)
    expect(group).to_contain_text("ValueError")
    expect(group).to_contain_text("bug not fixed yet")
    screen.screenshot("1-failures")

    # The fix is deployed; replay the whole group, with a reason for the audit trail.
    Call.objects.create(token=token, listener="fix-deployed")
    group.get_by_role("link", name="Replay this group").click()
    page.wait_for_url(re.compile(r".*/admin/messagio/delivery/failures/group/\?.*"))
    expect(page.locator("#failure-group")).to_contain_text("bug not fixed yet")
    page.get_by_label("Reason").fill("fix deployed: ValueError in fixable")
    screen.screenshot("2-replay-form")
    page.get_by_role("button", name="Replay 1 failed delivery").click()

    page.wait_for_url(re.compile(r".*/admin/messagio/replay/(\d+)/change/$"))
    expect(page.locator(".messagelist .success")).to_contain_text("1 failed delivery goes to")
    replay_id = int(re.search(r"/replay/(\d+)/change/", page.url).group(1))

    def succeeded_in_the_admin() -> bool:
        page.reload()
        return page.locator(".field-outcome_display .messagio-ok").inner_text() == "1 succeeded"

    wait_for(succeeded_in_the_admin, timeout=60, interval=0.25, what="the replay to succeed")
    expect(page.locator(".field-state_display .messagio-badge")).to_have_text("finished")
    expect(page.locator(".field-reason")).to_contain_text("fix deployed: ValueError in fixable")
    screen.screenshot("3-replay")

    # The replay's deliveries, then the delivery itself with both attempts.
    page.get_by_role("link", name="see the deliveries").click()
    rows = page.locator("#result_list tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.locator(".messagio-badge")).to_have_text("succeeded")
    screen.screenshot("4-deliveries")
    rows.locator(".field-listener_display a").click()
    expect(page.locator(".field-status_display .messagio-badge")).to_have_text("succeeded")
    attempts = page.locator("#messagio-attempts tr[id^=attempt-]")
    expect(attempts).to_have_count(2)
    expect(attempts.nth(0)).to_contain_text("bug not fixed yet")
    expect(attempts.nth(1)).to_contain_text(f"#{replay_id}")
    screen.screenshot("5-delivery")

    delivery = Delivery.objects.get(event_id=report.event_id)
    assert (delivery.status, delivery.attempts) == ("succeeded", 2)
    assert delivery.replay_id == replay_id
    replay = Replay.objects.get(pk=replay_id)
    assert (replay.source, replay.reason, replay.requested_by.username) == (
        "admin",
        "fix deployed: ValueError in fixable",
        "oncall",
    )
    screen.assert_clean()


def test_a_page_in_flight_refreshes_itself_but_not_over_a_reason_being_typed(screen):
    make_user("oncall", superuser=True)
    event = make_event("failed", "running")  # one to replay, one still in flight
    page = screen.page
    screen.log_in("oncall")
    screen.goto(f"/admin/messagio/event/{event.pk}/change/")

    reason = page.locator("#replay-failed-form input[name=reason]")
    assert page.evaluate("window.messagioRefresh.busy()") is False
    reason.fill("fix deployed")
    assert page.evaluate("window.messagioRefresh.busy()") is True  # no reload meanwhile
    reason.fill("")
    with page.expect_event("load", timeout=STEP_TIMEOUT_MS):  # reloads by itself
        page.locator("h1").click()  # the field left, empty: nothing to lose
    screen.assert_clean()


def test_a_staff_member_with_view_permission_only_sees_no_replay_button(screen):
    make_user("viewer", *VIEW)
    event = make_event("succeeded", "failed")
    page = screen.page
    screen.name = "viewer"

    screen.log_in("viewer")
    screen.goto("/admin/messagio/delivery/failures/")
    expect(page.locator("#failure-groups tr.failure-group")).to_have_count(1)
    expect(page.locator(".messagio-replay-group")).to_have_count(0)
    expect(page.get_by_text("Replay this group")).to_have_count(0)
    screen.screenshot("1-failures")

    screen.goto(f"/admin/messagio/event/{event.pk}/change/")
    expect(page.locator("#messagio-deliveries tr[id^=delivery-]")).to_have_count(2)
    expect(page.locator("#messagio-replay-actions")).to_have_count(0)
    expect(page.get_by_role("button", name=re.compile("Replay"))).to_have_count(0)
    screen.screenshot("2-event")

    screen.goto("/admin/messagio/delivery/")
    expect(page.locator("#result_list tbody tr")).to_have_count(2)
    expect(page.locator("option[value=replay_selected]")).to_have_count(0)
    screen.screenshot("3-deliveries")

    page.locator("#result_list .messagio-badge.messagio-failed").locator(
        "xpath=ancestor::tr"
    ).locator(".field-listener_display a").click()
    expect(page.locator(".field-status_display .messagio-badge")).to_have_text("failed")
    expect(page.locator("div.messagio-actions")).to_have_count(0)
    expect(page.locator("input[value='Replay this delivery']")).to_have_count(0)
    screen.screenshot("4-delivery")
    screen.assert_clean()


# --- Layout at 1280 pixels ------------------------------------------------------------------

LONG_TYPE = "accounts.integrations.salesforce.events.ContactSynchronisationRequestedForNewCustomer"
LONG_LISTENERS = [
    "accounts.integrations.salesforce.synchronisation.handlers.sync_contact_with_salesforce_crm",
    "accounts.integrations.salesforce.synchronisation.handlers.notify_account_manager_by_email",
]

#: Whether two elements' boxes overlap, in the page (selectors as arguments).
OVERLAP = """([first, second]) => {
    const a = document.querySelector(first).getBoundingClientRect();
    const b = document.querySelector(second).getBoundingClientRect();
    return !(a.right <= b.left || b.right <= a.left || a.bottom <= b.top || b.bottom <= a.top);
}"""


def test_the_events_buttons_leave_the_overview_chart_uncovered(screen):
    make_user("root", superuser=True)
    make_event("succeeded", "failed")
    page = screen.page
    screen.name = "layout"

    screen.log_in("root")
    screen.goto("/admin/messagio/event/")
    expect(page.locator("#messagio-overview svg.messagio-chart")).to_be_visible()
    expect(page.locator(".object-tools").get_by_role("link", name="Failures")).to_be_visible()

    assert not page.evaluate(OVERLAP, [".object-tools", "#messagio-overview"])
    screen.screenshot("1-events")
    screen.assert_clean()


def test_the_listener_registry_fits_a_1280_pixel_window_with_long_dotted_paths(screen):
    make_user("root", superuser=True)
    make_event("succeeded", "failed", messagio_type=LONG_TYPE, listeners=LONG_LISTENERS)
    page = screen.page
    screen.name = "layout"

    screen.log_in("root")
    screen.goto("/admin/messagio/delivery/listeners/")
    expect(page.locator("#orphans")).to_contain_text("sync_contact_with_salesforce_crm")
    expect(page.locator("#unheard")).to_contain_text("ContactSynchronisationRequested")

    assert page.evaluate("document.documentElement.scrollWidth") <= 1280
    screen.screenshot("2-listeners")
    screen.assert_clean()
