"""Publish events left recorded-not-published (what the periodic relay task does)."""

from django.core.management.base import BaseCommand

from messagio.relay import relay


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

    def handle(self, *args, batch_size, grace, once, **options):
        published = 0
        while True:
            report = relay(batch_size=batch_size, grace=grace)
            published += report.published
            if once or report.failed or not report.remaining:
                break
        self.stdout.write(f"Published {published} event(s).")
        if report.failed:
            self.stderr.write(
                f"The broker refused a publish; {report.remaining} event(s) still wait."
            )
