"""Delete records past their retention, in batches."""

from django.core.management.base import BaseCommand

from messagio.conf import get_setting
from messagio.retention import prune_expired


class Command(BaseCommand):
    help = "Delete finished messagio events (and their deliveries) past their retention."

    def add_arguments(self, parser):
        parser.add_argument(
            "--succeeded-days",
            type=float,
            default=None,
            help="Keep all-succeeded events this many days (default: RETAIN_SUCCEEDED_DAYS).",
        )
        parser.add_argument(
            "--failed-days",
            type=float,
            default=None,
            help="Keep events with a failure this many days (default: RETAIN_FAILED_DAYS).",
        )
        parser.add_argument("--batch-size", type=int, default=None)

    def handle(self, *args, succeeded_days, failed_days, batch_size, **options):
        def progress(count: int) -> None:
            self.stdout.write(f"\rdeleted {count} event(s)", ending="")
            self.stdout.flush()

        deleted = prune_expired(
            succeeded_days if succeeded_days is not None else get_setting("RETAIN_SUCCEEDED_DAYS"),
            failed_days if failed_days is not None else get_setting("RETAIN_FAILED_DAYS"),
            batch_size=batch_size,
            progress=progress,
            use_settings=False,
        )
        self.stdout.write(f"\rDeleted {deleted} event(s).")
