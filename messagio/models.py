"""What messagio remembers: every fired messagio (Event), every listener's delivery of it
(Delivery), every attempt at it (Attempt), and every replay asked for (Replay).

These names and fields are a public data contract: users query them.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import ObjectDoesNotExist
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from messagio.ids import time_ordered_uuid
from messagio.querysets import DeliveryQuerySet, EventQuerySet, RecordsManager


class Event(models.Model):
    """One row per fire of a messagio."""

    class Origin(models.TextChoices):
        FIRE = "fire", _("fire")
        SYNC = "sync", _("sync fire")
        SCHEDULE = "schedule", _("schedule")
        REPLAY = "replay", _("replay")

    class State(models.TextChoices):
        #: Written, not yet handed to the broker: the relay publishes it.
        RECORDED = "recorded", _("recorded, not published")
        #: Claimed by a publisher (on_commit or the relay), so no one else publishes it.
        PUBLISHING = "publishing", _("publishing")
        PUBLISHED = "published", _("published")
        #: Run in the firing process (sync fire, in-process center): nothing to publish.
        INLINE = "inline", _("run in process")

    id = models.UUIDField(primary_key=True, default=time_ordered_uuid, editable=False)
    messagio_type = models.CharField(_("messagio type"), max_length=255)
    fired_at = models.DateTimeField(_("fired at"), default=timezone.now)
    #: The pickled messagio, prefixed with its HMAC (see messagio.payload). Never unpickled
    #: without verifying it; the admin shows ``summary`` instead.
    payload = models.BinaryField(_("signed payload"))
    #: A JSON-safe, size-capped, field-by-field view of the payload, for display and search.
    summary = models.JSONField(_("summary"), default=dict)
    origin = models.CharField(_("origin"), max_length=16, choices=Origin, default=Origin.FIRE)
    replay_of = models.ForeignKey(
        "self",
        verbose_name=_("replay of"),
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="replays",
        db_index=False,  # messagio_ev_replay_of: only replays are indexed
    )
    state = models.CharField(_("dispatch state"), max_length=16, choices=State)
    #: When its messages were last published: by the fire or the relay, then again by a
    #: requeue, a replay or ``messagio_relay --lost-after`` (which counts a wait from it).
    published_at = models.DateTimeField(_("published at"), null=True, blank=True)
    #: When a publisher claimed it (state publishing), so a dead publisher's claim expires;
    #: on a recorded event, when the broker refused it alone (the relay waits
    #: PUBLISH_CLAIM_TIMEOUT before it tries again); on an inline one, while its in-process
    #: run goes on (the relay publishes what a run that never ended left).
    claimed_at = models.DateTimeField(null=True, blank=True)
    publish_error = models.TextField(_("last publish error"), blank=True)
    listener_count = models.PositiveSmallIntegerField(_("listeners"), default=0)

    objects = RecordsManager.from_queryset(EventQuerySet)()

    class Meta:
        # Related rows are read where they are written too (see RecordsManager).
        base_manager_name = "objects"
        verbose_name = _("event")
        verbose_name_plural = _("events")
        ordering = ["-fired_at"]
        indexes = [
            models.Index(fields=["-fired_at"], name="messagio_ev_fired"),
            models.Index(fields=["messagio_type", "-fired_at"], name="messagio_ev_type_fired"),
            models.Index(
                fields=["state", "fired_at"],
                name="messagio_ev_unpublished",
                condition=models.Q(state__in=["recorded", "publishing"]),
            ),
            models.Index(
                fields=["replay_of"],
                name="messagio_ev_replay_of",
                condition=models.Q(replay_of__isnull=False),
            ),
            # In-process runs going on (or that never ended): the relay's, and small.
            models.Index(
                fields=["claimed_at"],
                name="messagio_ev_inline_claimed",
                condition=models.Q(state="inline", claimed_at__isnull=False),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.short_type} {self.id}"

    @property
    def short_type(self) -> str:
        return self.messagio_type.rsplit(".", 1)[-1]


class Replay(models.Model):
    """A request to re-run deliveries: who asked, when, why, and how far it got."""

    class Source(models.TextChoices):
        ADMIN = "admin", _("admin")
        COMMAND = "command", _("command")
        CODE = "code", _("code")

    class State(models.TextChoices):
        RUNNING = "running", _("running")
        FINISHED = "finished", _("finished")
        STOPPED = "stopped", _("stopped")

    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        verbose_name=_("requested by"),
        null=True,
        blank=True,
        related_name="+",
        # Neither a database constraint nor Django's on_delete: a project may route
        # messagio's records to a database of their own, without the user table, where
        # deleting a user made Django look for replays on the user's database. A deleted
        # user's replays are set to NULL by messagio.replays.forget_deleted_requester.
        on_delete=models.DO_NOTHING,
        db_constraint=False,
    )
    #: Who asked, by the username they had then: the audit trail keeps it when their user is
    #: deleted. A database default, so that code from before it can still insert replays.
    requested_by_name = models.CharField(
        _("requested by (username)"), max_length=150, blank=True, default="", db_default=""
    )
    requested_at = models.DateTimeField(_("requested at"), default=timezone.now)
    reason = models.TextField(_("reason"), blank=True)
    source = models.CharField(_("source"), max_length=16, choices=Source, default=Source.CODE)
    description = models.CharField(_("selection"), max_length=500, blank=True)
    state = models.CharField(_("state"), max_length=16, choices=State, default=State.RUNNING)
    #: The selection is frozen at this instant: deliveries that fail after it are not picked up.
    snapshot_at = models.DateTimeField(_("snapshot at"), default=timezone.now)
    total = models.PositiveIntegerField(_("selected"), default=0)
    queued = models.PositiveIntegerField(_("queued"), default=0)
    canary = models.PositiveIntegerField(_("canary size"), null=True, blank=True)
    rate = models.FloatField(_("rate (per second)"), null=True, blank=True)
    max_failure_rate = models.FloatField(_("stop above failure rate"), null=True, blank=True)
    stopped_reason = models.TextField(_("why it stopped"), blank=True)
    finished_at = models.DateTimeField(_("finished at"), null=True, blank=True)
    #: The lookups of what a worker's replay task replays (the admin's bulk replays): what
    #: the relay sends the task again with when that worker was lost.
    delivery_filter = models.JSONField(_("selection lookups"), null=True, blank=True)
    #: When what runs it last showed it was alive: a batch queued, or a wait going on. A
    #: replay still running with none for STUCK_TIMEOUT lost its process (see the relay).
    progress_at = models.DateTimeField(_("last progress"), null=True, blank=True)
    #: Which run of it goes on (a worker's replay task, or the process that called replay()):
    #: a second copy of its task leaves it to that run while it shows progress.
    runner = models.CharField(_("run by"), max_length=32, blank=True)
    #: How often the relay sent its task again with no run showing progress since.
    times_resent = models.PositiveIntegerField(_("times sent again"), default=0)

    objects = RecordsManager()

    class Meta:
        base_manager_name = "objects"
        verbose_name = _("replay")
        verbose_name_plural = _("replays")
        ordering = ["-requested_at"]
        permissions = [("replay_delivery", _("Can replay deliveries"))]
        indexes = [
            # The relay's look for replays that lost their process, on every run: the
            # running few, however many replays are kept.
            models.Index(
                fields=["progress_at"],
                name="messagio_rp_running",
                condition=models.Q(state="running"),
            ),
        ]

    def __str__(self) -> str:
        return f"Replay #{self.pk} ({self.get_state_display()})"

    @staticmethod
    def requester(user: Any) -> dict[str, Any]:
        """The fields that record who asked for a replay: none for a user without a pk
        (anonymous, or nobody)."""
        if getattr(user, "pk", None) is None:
            return {}
        username = user.get_username() if hasattr(user, "get_username") else str(user)
        # By id: a user on another database than the records is no relation a router allows.
        return {"requested_by_id": user.pk, "requested_by_name": str(username)[:150]}

    @property
    def requested_by_shown(self) -> str:
        """Who asked, for display, without reading the user table (which the records'
        database may not have): the username kept, else (a replay from before it was kept)
        the user while it exists."""
        if self.requested_by_name:
            return self.requested_by_name
        if self.requested_by_id is None:
            return ""
        try:
            return str(self.requested_by)
        except ObjectDoesNotExist:
            return gettext("user #%(id)s (deleted)") % {"id": self.requested_by_id}


class RunRecord(models.Model):
    """What one run of a listener left: when, how long, its result or error, where it ran."""

    started_at = models.DateTimeField(_("started at"), null=True, blank=True)
    finished_at = models.DateTimeField(_("finished at"), null=True, blank=True)
    duration_ms = models.FloatField(_("duration (ms)"), null=True, blank=True)
    result = models.TextField(_("result"), blank=True)
    error_type = models.CharField(_("error class"), max_length=255, blank=True)
    error = models.TextField(_("error"), blank=True)
    traceback = models.TextField(_("traceback"), blank=True)
    task_id = models.CharField(_("Celery task id"), max_length=255, blank=True)
    worker = models.CharField(_("worker"), max_length=255, blank=True)

    class Meta:
        abstract = True


class NullsLastIndex(models.Index):
    """An index whose descending columns put NULLs last on every database, as
    ``F(...).desc(nulls_last=True)`` orders: SQLite and MySQL do so anyway (and their CREATE
    INDEX takes no NULLS LAST), PostgreSQL puts NULLs first unless told."""

    def create_sql(self, model: Any, schema_editor: Any, using: str = "", **kwargs: Any) -> Any:
        if schema_editor.connection.vendor != "postgresql":
            return super().create_sql(model, schema_editor, using=using, **kwargs)
        index = self.clone()
        index.fields_orders = [
            (name, "DESC NULLS LAST" if order == "DESC" else order)
            for name, order in self.fields_orders
        ]
        return super(NullsLastIndex, index).create_sql(model, schema_editor, using=using, **kwargs)


class Delivery(RunRecord):
    """One listener's delivery of one event: its options at fire time and its outcome."""

    class Status(models.TextChoices):
        PENDING = "pending", _("pending")
        RUNNING = "running", _("running")
        RETRYING = "retrying", _("retrying")
        SUCCEEDED = "succeeded", _("succeeded")
        FAILED = "failed", _("failed")

    id = models.UUIDField(primary_key=True, default=time_ordered_uuid, editable=False)
    event = models.ForeignKey(
        Event,
        verbose_name=_("event"),
        on_delete=models.CASCADE,
        related_name="deliveries",
        # (event, position), the unique constraint, serves lookups by event: every index
        # is one more write per fire and per status change.
        db_index=False,
    )
    #: Subscription order of this listener among the event's listeners.
    position = models.PositiveSmallIntegerField(_("position"), default=0)
    #: Denormalised from the event, so deliveries filter by type without a join.
    messagio_type = models.CharField(_("messagio type"), max_length=255)
    listener = models.CharField(_("listener"), max_length=255)
    import_path = models.CharField(max_length=255, blank=True)
    priority = models.PositiveSmallIntegerField(_("priority"), default=5)
    queue = models.CharField(_("queue"), max_length=200, blank=True)
    autoretry_for = models.JSONField(_("retry on"), default=list, blank=True)
    max_retries = models.PositiveSmallIntegerField(_("max retries"), default=0)
    retry_delay = models.FloatField(_("retry delay (s)"), default=0)
    time_limit = models.FloatField(_("time limit (s)"), null=True, blank=True)
    status = models.CharField(_("status"), max_length=16, choices=Status, default=Status.PENDING)
    attempts = models.PositiveIntegerField(_("attempts"), default=0)
    replay = models.ForeignKey(
        Replay,
        verbose_name=_("last replay"),
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="deliveries",
        db_index=False,  # messagio_dl_replay: only replayed deliveries are indexed
    )

    objects = RecordsManager.from_queryset(DeliveryQuerySet)()

    class Meta:
        base_manager_name = "objects"
        verbose_name = _("delivery")
        verbose_name_plural = _("deliveries")
        ordering = ["event_id", "position"]
        constraints = [
            models.UniqueConstraint(
                fields=["event", "position"], name="messagio_dl_event_position"
            ),
        ]
        indexes = [
            models.Index(
                fields=["status", "listener", "error_type"], name="messagio_dl_status_listener"
            ),
            # Newest first, the never started (pending) last: the Deliveries list filtered by
            # status. The overview's ranges of started_at read it too.
            NullsLastIndex(fields=["status", "-started_at"], name="messagio_dl_status_newest"),
            # Whole, not partial: the admin walks it for the distinct listeners.
            models.Index(fields=["listener", "finished_at"], name="messagio_dl_listener_finished"),
            models.Index(
                fields=["replay"],
                name="messagio_dl_replay",
                condition=models.Q(replay__isnull=False),
            ),
            # The admin's "has failures": which events have a failed delivery, without
            # reading the deliveries themselves (only failed rows are in it).
            models.Index(
                fields=["event"],
                name="messagio_dl_failed_events",
                condition=models.Q(status="failed"),
            ),
            models.Index(fields=["messagio_type", "status"], name="messagio_dl_type_status"),
            # The Deliveries list, newest first and the never started last (its ordering).
            NullsLastIndex(fields=["-started_at"], name="messagio_dl_newest"),
            models.Index(
                fields=["listener", "messagio_type", "error_type", "finished_at"],
                name="messagio_dl_failed_groups",
                condition=models.Q(status="failed"),
            ),
            # The Deliveries list filtered by error class, in its order (the statuses whose
            # error class is their own: messagio_admin.filters.ErrorClassFilter).
            NullsLastIndex(
                fields=["error_type", "-started_at"],
                name="messagio_dl_error_newest",
                condition=models.Q(status__in=["failed", "retrying"]),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.listener} for {self.event_id}"


class Attempt(RunRecord):
    """One attempt at a delivery. Append-only: a retry or replay never erases what came before."""

    class Outcome(models.TextChoices):
        SUCCEEDED = "succeeded", _("succeeded")
        FAILED = "failed", _("failed")
        RETRIED = "retried", _("failed, retry scheduled")
        #: The worker died (or lost its connection) mid-listener; the message came back.
        LOST = "lost", _("lost with its worker")
        #: The listener ran past its time limit and was stopped.
        TIMEOUT = "timeout", _("timed out")

    delivery = models.ForeignKey(
        Delivery,
        verbose_name=_("delivery"),
        on_delete=models.CASCADE,
        related_name="history",
        db_index=False,  # messagio_at_delivery (delivery, number) serves it
    )
    number = models.PositiveIntegerField(_("attempt"))
    outcome = models.CharField(_("outcome"), max_length=16, choices=Outcome)
    replay = models.ForeignKey(
        Replay,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="attempts",
        db_index=False,  # messagio_at_replay: only replayed attempts are indexed
    )

    objects = RecordsManager()

    class Meta:
        base_manager_name = "objects"
        verbose_name = _("attempt")
        verbose_name_plural = _("attempts")
        ordering = ["delivery_id", "number"]
        indexes = [
            models.Index(fields=["delivery", "number"], name="messagio_at_delivery"),
            models.Index(
                fields=["replay"],
                name="messagio_at_replay",
                condition=models.Q(replay__isnull=False),
            ),
        ]

    def __str__(self) -> str:
        return f"attempt {self.number} of {self.delivery_id}: {self.outcome}"
