"""Replay failed deliveries from the command line, in batches, with a progress bar."""

import datetime

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db.models import Q
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from messagio.management.progress import Progress
from messagio.models import Delivery, Replay
from messagio.replays import check_options, replay


class Command(BaseCommand):
    help = "Replay failed messagio deliveries with their original payload."

    def add_arguments(self, parser):
        parser.add_argument("--type", help="Messagio type (dotted path, or its end).")
        parser.add_argument("--listener", help="Listener id (dotted path, or its end).")
        parser.add_argument("--error", help="Error class (dotted path, or its end).")
        parser.add_argument("--since", help="Failed at or after (ISO 8601).")
        parser.add_argument("--until", help="Failed before (ISO 8601).")
        parser.add_argument("--reason", default="", help="Why, for the audit trail.")
        parser.add_argument(
            "--requested-by", metavar="USERNAME", help="Who asks, for the audit trail."
        )
        parser.add_argument("--canary", type=int, help="Replay this many first and check.")
        parser.add_argument("--rate", type=float, help="At most this many per second.")
        parser.add_argument(
            "--max-failure-rate", type=float, help="Stop above this share failing again (0-1)."
        )
        parser.add_argument("--batch-size", type=int, default=500)
        parser.add_argument("--dry-run", action="store_true", help="Only count what would run.")

    def _when(self, value, option):
        if value is None:
            return None
        try:
            parsed = parse_datetime(value)
        except ValueError:  # well formed, not a date: month 13
            parsed = None
        if parsed is None:
            raise CommandError(f"--{option} must be an ISO 8601 date and time, not {value!r}")
        try:
            if timezone.is_naive(parsed):
                parsed = timezone.make_aware(parsed)  # in the current time zone
            parsed.astimezone(datetime.UTC)  # as the database will get it
        except OverflowError:  # 0001-01-01 east of UTC
            raise CommandError(f"--{option} {value!r} is out of the range of dates") from None
        return parsed

    def _requester(self, username):
        """The user named, who is recorded as having asked (the admin records its user)."""
        if username is None:
            return None
        user_model = get_user_model()
        try:
            return user_model._default_manager.get_by_natural_key(username)
        except user_model.DoesNotExist:
            raise CommandError(
                f"--requested-by {username!r}: no such user; give a username, or leave it out"
            ) from None

    def handle(self, *args, **options):
        try:
            # Refused before anything is counted or recorded.
            check_options(
                canary=options["canary"],
                rate=options["rate"],
                max_failure_rate=options["max_failure_rate"],
                batch_size=options["batch_size"],
            )
        except ValueError as exc:
            raise CommandError(f"--{str(exc).replace('_', '-')}") from exc
        selection = Delivery.objects.failed()
        filters = []
        for option, field in (
            ("type", "messagio_type"),
            ("listener", "listener"),
            ("error", "error_type"),
        ):
            value = options[option]
            if value is None:
                continue
            if not value.strip():
                # An unset variable in a script ("--type $TYPE"): not every failure.
                raise CommandError(f"--{option} is empty; leave it out to replay any {option}")
            # The whole dotted name, or its last parts: "Ping" is not "PlainPing".
            selection = selection.filter(
                Q(**{field: value}) | Q(**{f"{field}__endswith": f".{value}"})
            )
            filters.append(f"--{option} {value}")
        since, until = self._when(options["since"], "since"), self._when(options["until"], "until")
        if since:
            selection = selection.filter(finished_at__gte=since)
            filters.append(f"--since {options['since']}")
        if until:
            selection = selection.filter(finished_at__lt=until)
            filters.append(f"--until {options['until']}")
        requested_by = self._requester(options["requested_by"])
        if options["dry_run"]:
            self.stdout.write(f"{selection.count()} failed deliveries would be replayed.")
            return
        if not selection.exists():
            # Nothing recorded for it: a typo in a filter is not an empty replay in the audit.
            raise CommandError("No failed delivery matches these filters; nothing replayed.")

        shown = Progress(self, options["verbosity"])

        def progress(record: Replay) -> None:
            total = max(record.total, 1)
            done = int(30 * record.queued / total)
            shown.show(f"[{'#' * done}{'.' * (30 - done)}] {record.queued}/{record.total}")

        try:
            record = replay(
                selection,
                reason=options["reason"],
                requested_by=requested_by,
                source="command",
                description=" ".join(["failed deliveries", *filters]),
                canary=options["canary"],
                rate=options["rate"],
                max_failure_rate=options["max_failure_rate"],
                batch_size=options["batch_size"],
                progress=progress,
            )
        except KeyboardInterrupt:
            shown.end()
            raise CommandError(
                "Interrupted: the replay is recorded stopped, with what it queued (see the "
                "Replays screen); run it again to replay the rest"
            ) from None
        shown.end()
        if record.state == Replay.State.STOPPED:
            raise CommandError(f"Replay #{record.pk} stopped: {record.stopped_reason}")
        self.stdout.write(f"Replay #{record.pk}: queued {record.queued} of {record.total}.")
