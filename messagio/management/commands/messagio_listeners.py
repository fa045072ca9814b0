"""The registry of this process as a table: messagio types, listeners in order, options."""

from django.core.management.base import BaseCommand

from messagio.dispatch import effective_priority, effective_queue, listener_spec
from messagio.registry import registry


class Command(BaseCommand):
    help = "List every messagio type and its listeners, in subscription order, with options."

    def handle(self, *args, **options):
        rows = [("MESSAGIO TYPE", "#", "LISTENER", "PRIORITY", "QUEUE", "RETRY")]
        for messagio_type in registry.messagio_types():
            for position, subscription in enumerate(registry.subscriptions_for(messagio_type)):
                spec = listener_spec(subscription)
                retry = "-"
                if spec["autoretry_for"]:
                    names = ",".join(p.rsplit(":", 1)[-1] for p in spec["autoretry_for"])
                    retry = f"{names} x{spec['max_retries']} every {spec['retry_delay']:g}s"
                rows.append(
                    (
                        messagio_type.get_name(),
                        str(position + 1),
                        subscription.listener_id,
                        str(effective_priority(subscription)),
                        effective_queue(subscription) or "(routed)",
                        retry,
                    )
                )
        if len(rows) == 1:
            self.stdout.write("No listeners are registered.")
            return
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            self.stdout.write("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)))
