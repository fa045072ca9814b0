"""Publish events left recorded-not-published (what the periodic relay task does)."""

import datetime

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from messagio.relay import relay
from messagio.validation import SECONDS_AT_MOST, amount, require


class Command(BaseCommand):
    help = "Publish messagio events that were recorded but never reached the broker."

    def add_arguments(self, parser):
        parser.add_argument("--batch-size", type=int, default=500)
        parser.add_argument(
            "--grace",
            type=float,
            default=None,
            help="Seconds an event may wait before it is relayed (default: RELAY_GRACE).",
        )
        parser.add_argument("--once", action="store_true", help="Run a single batch.")
        parser.add_argument(
            "--lost-after",
            type=float,
            metavar="SECONDS",
            help="Also publish again what has waited for a worker for more than SECONDS since "
            "its event was published (its message presumably lost by the broker). Choose more "
            "than your queues ever take: a copy running alongside a message still queued "
            "runs each listener once, but may run a group's listeners out of order.",
        )

    def handle(self, *args, batch_size, grace, once, lost_after, **options):
        if batch_size < 1:
            raise CommandError("--batch-size takes a number of events, 1 or more.")
        seconds = amount("a number of seconds", zero=True, most=SECONDS_AT_MOST)
        for option, value in (("--grace", grace), ("--lost-after", lost_after)):
            try:
                if value is not None:
                    require(seconds, value, option)
            except ValueError as exc:
                raise CommandError(str(exc)) from exc
        # What the relay publishes below, requeued deliveries included, is not lost.
        started = timezone.now()
        published = requeued = 0
        replays = (0, 0)
        first = True
        refused: set[str] = set()
        while True:
            # By hand, once the cause is fixed: what the broker refused is tried again now.
            report = relay(
                batch_size=batch_size,
                grace=grace,
                requeue=first,
                retry_refused=True,
                exclude=refused,
            )
            if first:
                requeued = report.requeued
                replays = (report.replays_resumed, report.replays_stopped)
            first = False
            published += report.published
            refused |= report.refused_ids
            if once or report.unreachable or not report.remaining:
                break
        self.stdout.write(f"Published {published} event(s).")
        if requeued:
            self.stdout.write(f"Queued again {requeued} delivery(ies) stuck running or retrying.")
        if any(replays):
            self.stdout.write(
                f"Replays that lost their process: {replays[0]} sent to a worker again, "
                f"{replays[1]} recorded stopped."
            )
        # A non-zero exit for either, so that cron, a Kubernetes Job or CI sees that events wait.
        also = f" (and refused {len(refused)} event(s) on their own)" if refused else ""
        if report.unreachable:
            skipped = "; --lost-after was not run" if lost_after is not None else ""
            raise CommandError(
                f"The broker could not be reached{also}; {report.remaining} event(s) still "
                f"wait{skipped}. Run it again when the broker is back."
            )
        refused_again = 0
        if lost_after is not None:
            refused_again = self.requeue_lost(lost_after, batch_size, once, started)
        if refused or refused_again:
            raise CommandError(
                f"The broker refused {len(refused) + refused_again} event(s) on their own; "
                "each keeps its publish error (shown in the admin) or is listed above. Run "
                "this again once the cause is fixed."
            )

    def requeue_lost(
        self, older_than: float, batch_size: int, once: bool, started: datetime.datetime
    ) -> int:
        """Publish again what waited too long; returns how many events the broker refused."""
        from messagio.recovery import requeue_lost

        events = deliveries = refused = 0
        skipped: dict[str, str] = {}
        while True:
            # Every batch counts the wait from the same start: none takes up what another
            # published, nor what the relay above requeued; what it left is not read again.
            lost = requeue_lost(older_than, limit=batch_size, now=started, exclude=set(skipped))
            events, deliveries = events + lost.events, deliveries + lost.deliveries
            skipped.update(lost.skipped)
            refused += lost.refused
            if once or lost.error or lost.examined < batch_size:
                break
        self.stdout.write(
            f"Published again {deliveries} delivery(ies) of {events} event(s) "
            f"that waited for a worker for more than {older_than:g}s."
        )
        for event_id, why in skipped.items():
            self.stderr.write(f"Event {event_id} not published again: {why}.")
        if lost.error:
            raise CommandError(f"Stopped: {lost.error}; run it again when the broker is back.")
        return refused
