"""Management commands: messagio_listeners (the registry as a table), messagio_replay --dry-run,
messagio_relay's arguments."""

import datetime
import io
import re

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.test import override_settings
from django.utils import timezone

from messagio import MessageCenter
from messagio.models import Delivery, Event, Replay
from messagio.registry import registry
from tests.terminal import Terminal
from tests.testapp.messagio import Unheard
from tests.testapp.runtime_listeners import runtime_listener

PING = "tests.testapp.messagio.Ping"
HEADER = ["MESSAGIO TYPE", "#", "LISTENER", "PRIORITY", "QUEUE", "RETRY"]


# --- messagio_listeners -------------------------------------------------------------------


def listeners_table() -> tuple[list[str], list[list[str]]]:
    """The command's output: its lines, and each line split into its cells."""
    out = io.StringIO()
    call_command("messagio_listeners", stdout=out)
    lines = out.getvalue().splitlines()
    return lines, [re.split(r"\s{2,}", line.rstrip()) for line in lines]


def rows_of(rows: list[list[str]], messagio_type: str) -> list[list[str]]:
    return [row for row in rows if row[0] == messagio_type]


def test_listeners_prints_a_header_with_the_option_columns():
    _, rows = listeners_table()

    assert rows[0] == HEADER


def test_listeners_prints_a_types_listeners_in_subscription_order():
    _, rows = listeners_table()

    assert rows_of(rows, PING) == [
        [PING, "1", "tests.testapp.messagio.first", "5", "(routed)", "-"],
        [PING, "2", "tests.testapp.messagio.second", "5", "(routed)", "-"],
        [PING, "3", "tests.testapp.messagio.broken", "5", "(routed)", "-"],
        [PING, "4", "tests.testapp.messagio.third", "5", "(routed)", "-"],
        [PING, "5", "tests.testapp.messagio.of_many", "5", "(routed)", "-"],
    ]


def test_listeners_lists_a_listener_of_many_types_under_each():
    _, rows = listeners_table()

    (plain,) = rows_of(rows, "tests.testapp.messagio.PlainPing")
    assert plain[1:] == ["1", "tests.testapp.messagio.of_many", "5", "(routed)", "-"]
    assert rows_of(rows, PING)[4][1:3] == ["5", "tests.testapp.messagio.of_many"]


def test_listeners_shows_the_retry_policy():
    _, rows = listeners_table()

    flaky, sibling = rows_of(rows, "tests.testapp.messagio.Flaky")
    assert flaky[2] == "tests.testapp.messagio.flaky"
    assert flaky[5] == "ConnectionError x3 every 0.1s"
    assert sibling[2] == "tests.testapp.messagio.flaky_sibling"
    assert sibling[5] == "-"


def test_listeners_shows_a_subscriptions_own_priority_and_queue():
    _, rows = listeners_table()

    (low,) = rows_of(rows, "tests.testapp.messagio.BacklogLow")
    (high,) = rows_of(rows, "tests.testapp.messagio.BacklogHigh")
    assert low[2:] == ["tests.testapp.messagio.low", "1", settings.TEST_PRIORITY_QUEUE, "-"]
    assert high[2:] == ["tests.testapp.messagio.high", "10", settings.TEST_PRIORITY_QUEUE, "-"]


def test_listeners_shows_a_runtime_subscription_with_its_options():
    MessageCenter.singleton().subscribe(
        Unheard,
        runtime_listener,
        priority=7,
        queue="reports",
        autoretry_for=(ConnectionError, TimeoutError),
        max_retries=2,
        default_retry_delay=1.5,
    )

    _, rows = listeners_table()

    assert rows_of(rows, "tests.testapp.messagio.Unheard") == [
        [
            "tests.testapp.messagio.Unheard",
            "1",
            "tests.testapp.runtime_listeners.runtime_listener",
            "7",
            "reports",
            "ConnectionError,TimeoutError x2 every 1.5s",
        ]
    ]


def test_listeners_fills_unset_options_from_the_settings():
    MessageCenter.singleton().subscribe(Unheard, runtime_listener, autoretry_for=(OSError,))

    with override_settings(
        MESSAGIO={
            "DEFAULT_PRIORITY": 3,
            "DEFAULT_QUEUE": "busy",
            "DEFAULT_MAX_RETRIES": 4,
            "DEFAULT_RETRY_DELAY": 60,
        }
    ):
        _, rows = listeners_table()

    (row,) = rows_of(rows, "tests.testapp.messagio.Unheard")
    assert row[3:] == ["3", "busy", "OSError x4 every 60s"]
    assert rows_of(rows, PING)[0][3:] == ["3", "busy", "-"]


def test_listeners_aligns_its_columns():
    lines, _ = listeners_table()

    column = lines[0].index("LISTENER")
    for line in lines[1:]:
        assert line[column - 2 : column] == "  "
        assert line[column] != " "


def test_listeners_says_when_no_listener_is_registered():
    registry.restore(({}, {}))  # the autouse isolated_registry fixture puts it back

    lines, _ = listeners_table()

    assert lines == ["No listeners are registered."]


# --- messagio_replay --dry-run ------------------------------------------------------------


def at(day: int, hour: int = 12) -> datetime.datetime:
    return datetime.datetime(2024, 3, day, hour, tzinfo=datetime.UTC)


def make_delivery(
    status: str = "failed",
    *,
    messagio_type: str = PING,
    listener: str = "tests.testapp.messagio.broken",
    error_type: str = "builtins.RuntimeError",
    finished_at: datetime.datetime | None = None,
) -> Delivery:
    event = Event.objects.create(
        messagio_type=messagio_type, payload=b"x", state="published", fired_at=timezone.now()
    )
    return Delivery.objects.create(
        event=event,
        position=0,
        messagio_type=messagio_type,
        listener=listener,
        status=status,
        error_type=error_type if status == "failed" else "",
        finished_at=finished_at if finished_at is not None else at(10),
    )


def dry_run(*args: str) -> str:
    out = io.StringIO()
    call_command("messagio_replay", "--dry-run", *args, stdout=out)
    return out.getvalue()


def would_replay(count: int) -> str:
    return f"{count} failed deliveries would be replayed.\n"


@pytest.mark.django_db
def test_dry_run_counts_only_failed_deliveries():
    make_delivery("failed")
    make_delivery("failed")
    for status in ("succeeded", "pending", "running", "retrying"):
        make_delivery(status)

    assert dry_run() == would_replay(2)


@pytest.mark.django_db
def test_dry_run_replays_nothing_and_records_no_replay():
    failed = make_delivery("failed")

    dry_run()

    failed.refresh_from_db()
    assert failed.status == "failed"
    assert failed.replay_id is None
    assert Replay.objects.count() == 0


@pytest.mark.django_db
@pytest.mark.parametrize("value", [PING, "messagio.Ping", "Ping"])
def test_dry_run_filters_by_type_dotted_path_or_its_end(value):
    make_delivery(messagio_type=PING)
    make_delivery(messagio_type=PING)
    make_delivery(messagio_type="tests.testapp.messagio.Flaky")

    assert dry_run("--type", value) == would_replay(2)


@pytest.mark.django_db
@pytest.mark.parametrize("value", ["tests.testapp.messagio.broken", "broken"])
def test_dry_run_filters_by_listener(value):
    make_delivery(listener="tests.testapp.messagio.broken")
    make_delivery(listener="tests.testapp.messagio.flaky")

    assert dry_run("--listener", value) == would_replay(1)


@pytest.mark.django_db
@pytest.mark.parametrize("value", ["builtins.ConnectionError", "ConnectionError"])
def test_dry_run_filters_by_error_class(value):
    make_delivery(error_type="builtins.ConnectionError")
    make_delivery(error_type="builtins.ConnectionError")
    make_delivery(error_type="builtins.RuntimeError")

    assert dry_run("--error", value) == would_replay(2)


@pytest.mark.django_db
def test_dry_run_since_includes_deliveries_failed_at_that_instant():
    make_delivery(finished_at=at(9))
    make_delivery(finished_at=at(10))
    make_delivery(finished_at=at(11))

    assert dry_run("--since", "2024-03-10T12:00:00+00:00") == would_replay(2)


@pytest.mark.django_db
def test_dry_run_until_excludes_deliveries_failed_at_that_instant():
    make_delivery(finished_at=at(9))
    make_delivery(finished_at=at(10))
    make_delivery(finished_at=at(11))

    assert dry_run("--until", "2024-03-10T12:00:00+00:00") == would_replay(1)


@pytest.mark.django_db
def test_dry_run_since_and_until_read_the_utc_offset():
    make_delivery(finished_at=at(10, hour=11))
    make_delivery(finished_at=at(10, hour=13))

    # 14:00+02:00 is 12:00 UTC: only the delivery failed at 13:00 UTC is at or after it.
    assert dry_run("--since", "2024-03-10T14:00:00+02:00") == would_replay(1)


@pytest.mark.django_db
def test_dry_run_combines_every_filter():
    match = {
        "messagio_type": PING,
        "listener": "tests.testapp.messagio.broken",
        "error_type": "builtins.RuntimeError",
        "finished_at": at(10),
    }
    make_delivery(**match)
    make_delivery(**{**match, "messagio_type": "tests.testapp.messagio.Flaky"})
    make_delivery(**{**match, "listener": "tests.testapp.messagio.third"})
    make_delivery(**{**match, "error_type": "builtins.KeyError"})
    make_delivery(**{**match, "finished_at": at(5)})
    make_delivery(**{**match, "finished_at": at(20)})
    make_delivery("succeeded", **{k: v for k, v in match.items() if k != "error_type"})

    output = dry_run(
        "--type=Ping",
        "--listener=broken",
        "--error=RuntimeError",
        "--since=2024-03-09T00:00:00Z",
        "--until=2024-03-11T00:00:00Z",
    )

    assert output == would_replay(1)


@pytest.mark.django_db
def test_dry_run_with_nothing_failed_counts_zero():
    make_delivery("succeeded")

    assert dry_run() == would_replay(0)


@pytest.mark.django_db
@pytest.mark.parametrize("option", ["--since", "--until"])
@pytest.mark.parametrize("value", ["last tuesday", "2026-13-45T00:00", "2026-02-30"])
def test_a_date_that_does_not_parse_is_a_command_error(option, value):
    with pytest.raises(CommandError, match=f"{option} must be an ISO 8601 date and time"):
        dry_run(option, value)


@pytest.mark.django_db
def test_a_replay_whose_filters_match_nothing_records_nothing_and_fails():
    make_delivery("failed")

    with pytest.raises(CommandError, match="No failed delivery matches these filters"):
        call_command("messagio_replay", "--type", "NoSuchType", stdout=io.StringIO())

    assert not Replay.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize(
    "option, field, wanted, lookalike",
    [
        ("--type", "messagio_type", PING, "tests.testapp.messagio.PlainPing"),
        (
            "--listener",
            "listener",
            "project.shop.messagio.reserve_stock",
            "project.shop.messagio.unreserve_stock",
        ),
        (
            "--error",
            "error_type",
            "builtins.ConnectionError",
            "urllib3.exceptions.NewConnectionError",
        ),
    ],
)
def test_a_short_name_matches_only_whole_dotted_names(option, field, wanted, lookalike):
    make_delivery(**{field: wanted})
    make_delivery(**{field: lookalike})

    assert dry_run(option, wanted.rsplit(".", 1)[-1]) == would_replay(1)


@pytest.mark.django_db
def test_a_date_without_offset_is_read_in_the_current_time_zone():
    make_delivery(finished_at=at(10, hour=11))
    make_delivery(finished_at=at(10, hour=13))

    assert dry_run("--since", "2024-03-10T12:00:00") == would_replay(1)


@pytest.mark.django_db
@pytest.mark.parametrize("option", ["--type", "--listener", "--error"])
def test_an_empty_filter_is_refused_not_taken_for_every_failure(option):
    make_delivery("failed")

    with pytest.raises(CommandError, match=f"{option} is empty"):
        call_command("messagio_replay", option, "", stdout=io.StringIO())

    assert not Replay.objects.exists()


@pytest.mark.django_db
@override_settings(TIME_ZONE="Asia/Tokyo")
def test_a_date_out_of_range_once_in_utc_is_a_command_error():
    with pytest.raises(CommandError, match="--since '0001-01-01' is out of the range of dates"):
        dry_run("--since", "0001-01-01")


@pytest.mark.django_db
def test_a_command_replay_records_its_filters_for_the_audit(monkeypatch):
    from messagio import replays

    monkeypatch.setattr(replays, "publish_all", lambda envelopes: ["task"] * len(envelopes))
    make_delivery("failed", finished_at=at(10))
    call_command("messagio_replay", "--type", "Ping", "--since", "2024-03-09", stdout=io.StringIO())

    assert Replay.objects.get().description == ("failed deliveries --type Ping --since 2024-03-09")


@pytest.mark.django_db
def test_a_command_replay_records_who_asked_when_told(monkeypatch, django_user_model):
    from messagio import replays

    monkeypatch.setattr(replays, "publish_all", lambda envelopes: ["task"] * len(envelopes))
    oncall = django_user_model.objects.create_user("oncall")
    make_delivery("failed")
    call_command("messagio_replay", "--requested-by", "oncall", stdout=io.StringIO())

    record = Replay.objects.get()
    assert (record.source, record.requested_by_id, record.requested_by_name) == (
        "command",
        oncall.pk,
        "oncall",
    )


@pytest.mark.django_db
def test_a_command_replay_for_a_user_who_does_not_exist_records_nothing_and_fails():
    failed = make_delivery("failed")

    with pytest.raises(CommandError, match="--requested-by 'nobody': no such user"):
        call_command("messagio_replay", "--requested-by", "nobody", stdout=io.StringIO())

    assert not Replay.objects.exists()
    failed.refresh_from_db()
    assert failed.status == "failed"


@pytest.mark.django_db(transaction=True)  # replay() runs as it commits
@pytest.mark.parametrize(
    ("out", "verbosity", "progress"),
    [
        (Terminal, 1, f"\r[{'#' * 15}{'.' * 15}] 1/2\r[{'#' * 30}] 2/2\n"),
        (io.StringIO, 1, ""),
        (io.StringIO, 2, f"[{'#' * 15}{'.' * 15}] 1/2\n[{'#' * 30}] 2/2\n"),
    ],
)
def test_the_replay_commands_progress_bar_is_for_a_terminal(monkeypatch, out, verbosity, progress):
    from messagio import replays

    monkeypatch.setattr(replays, "publish_all", lambda envelopes: ["task"] * len(envelopes))
    for _ in range(2):
        make_delivery("failed")
    written = out()

    call_command("messagio_replay", "--batch-size=1", verbosity=verbosity, stdout=written)

    record = Replay.objects.get()
    assert written.getvalue() == f"{progress}Replay #{record.pk}: queued 2 of 2.\n"


@pytest.mark.django_db(transaction=True)  # replay() runs as it commits
def test_a_replay_interrupted_is_recorded_stopped_with_what_it_queued(monkeypatch):
    from messagio import replays

    sent = []

    def interrupted_after_one(envelope_list):
        if sent:
            raise KeyboardInterrupt
        sent.extend(envelope_list)
        return ["task"] * len(envelope_list)

    monkeypatch.setattr(replays, "publish_all", interrupted_after_one)
    first, second = make_delivery("failed"), make_delivery("failed")

    with pytest.raises(CommandError, match="Interrupted: the replay is recorded stopped"):
        call_command("messagio_replay", "--batch-size", "1", stdout=io.StringIO())

    record = Replay.objects.get()
    assert record.state == Replay.State.STOPPED
    assert record.queued == 1
    assert "interrupted (KeyboardInterrupt) after queueing 1 of 2" in record.stopped_reason
    # The one it took and did not send is failed again, not pending with no message.
    statuses = {d.pk: d.status for d in Delivery.objects.filter(pk__in=[first.pk, second.pk])}
    assert sorted(statuses.values()) == ["failed", "pending"]


# --- messagio_relay -----------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    "options, error",
    [
        (["--lost-after", "-1"], "--lost-after takes a number of seconds"),
        (["--lost-after", "nan"], "--lost-after takes a number of seconds"),
        (["--lost-after", "inf"], "--lost-after takes a number of seconds"),
        (["--lost-after", "1e12"], "--lost-after takes a number of seconds, 0 or more, at most"),
        (["--grace", "nan"], "--grace takes a number of seconds"),
        (["--grace", "-5"], "--grace takes a number of seconds"),
        (["--grace", "1e12"], "--grace takes a number of seconds"),
        (["--batch-size", "0"], "--batch-size takes a number of events"),
    ],
)
def test_the_relay_command_refuses_what_would_never_end(options, error):
    with pytest.raises(CommandError, match=error):
        call_command("messagio_relay", *options, stdout=io.StringIO())


@pytest.mark.django_db
@pytest.mark.parametrize(
    "options, error",
    [
        (["--canary", "0"], "--canary takes a number of deliveries, 1 or more"),
        (["--rate", "0"], "--rate takes deliveries per second, more than 0"),
        (["--max-failure-rate", "20"], "--max-failure-rate takes a share from 0 to 1"),
        (["--batch-size", "-1"], "--batch-size takes a number of deliveries, 1 or more"),
    ],
)
def test_the_replay_command_refuses_bad_options_before_recording_anything(options, error):
    failed = make_delivery("failed")

    with pytest.raises(CommandError, match=error):
        call_command("messagio_replay", *options, stdout=io.StringIO())

    assert not Replay.objects.exists()
    failed.refresh_from_db()
    assert failed.status == "failed"
