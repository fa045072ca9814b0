"""Delete records past their retention, in batches."""

from django.core.management.base import BaseCommand, CommandError

from messagio.conf import get_setting
from messagio.management.progress import Progress
from messagio.retention import BATCH_SIZE_NAME, check_batch_size, count_expired, prune_expired


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
        parser.add_argument(
            "--batch-size", type=int, default=None, help="Events per batch (PRUNE_BATCH_SIZE)."
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="Only count what would be deleted."
        )

    def handle(self, *args, succeeded_days, failed_days, batch_size, dry_run, **options):
        shown = Progress(self, options["verbosity"])

        def progress(count: int) -> None:
            shown.show(f"deleted {count} event(s)")

        if succeeded_days is None:
            succeeded_days = get_setting("RETAIN_SUCCEEDED_DAYS")
        if failed_days is None:
            failed_days = get_setting("RETAIN_FAILED_DAYS")
        replays: list[int] = []
        try:
            if dry_run:
                if batch_size is not None:  # refused here as the real run would refuse it
                    check_batch_size(batch_size, BATCH_SIZE_NAME)
                count = count_expired(succeeded_days, failed_days)
                self.stdout.write(f"{count} event(s) would be deleted.")
                return
            deleted = prune_expired(
                succeeded_days,
                failed_days,
                batch_size=batch_size,
                progress=progress,
                use_settings=False,
                replays_deleted=replays.append,
            )
        except ValueError as exc:
            shown.end()
            raise CommandError(str(exc)) from exc
        shown.end()
        also = f" and {replays[0]} replay record(s)" if replays and replays[0] else ""
        self.stdout.write(f"Deleted {deleted} event(s){also}.")
