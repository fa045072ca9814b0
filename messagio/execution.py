"""Running one listener for one delivery: claim, run, record, decide on a retry.

Shared by the Celery task and by the in-process paths (sync fire, InProcessMessageCenter),
so that every run is recorded the same way wherever it happens.
"""

from __future__ import annotations

import datetime
import logging
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from django.utils import timezone

from messagio.dispatch import resolve_listener, should_retry
from messagio.exceptions import (
    ListenerLeftTransactionOpenError,
    ListenerNotFoundError,
    ListenerTimeoutError,
    ListenerTransactionRolledBackError,
    PayloadSignatureError,
)
from messagio.report import ListenerOutcome

logger = logging.getLogger("messagio")


class MessagioClassMissingError(LookupError):
    """The payload names a messagio class that no longer imports."""


#: Failures that no retry can mend: they are recorded as failed at once.
NOT_RETRYABLE = (ListenerNotFoundError, PayloadSignatureError, MessagioClassMissingError)
#: What a listener may raise to end its process (``sys.exit()``, argparse, Ctrl-C in a sync
#: fire): recorded as its failure, then let through.
EXITS = (SystemExit, KeyboardInterrupt)


#: Set on an exit that run_once took for its listener's own (and recorded, unless the
#: attempt was taken over meanwhile).
RECORDED_EXIT = "messagio_recorded_exit"

#: Whether a listener is running in this context: the deliver task's ``retry`` refuses then
#: (see ``messagio.tasks``).
listener_running: ContextVar[bool] = ContextVar("messagio_listener_running", default=False)


def exit_is_the_listeners_own(exc: BaseException) -> bool:
    """Whether a SystemExit or KeyboardInterrupt came from the listener, not from a Celery
    worker shutting down (whose message the broker hands back, so its delivery must stay
    running to be run again): a solo pool's WorkerShutdown or WorkerTerminate, a pool
    process's own shutdown handler, or a Ctrl-C where Python's default handler is in place
    (a Celery worker ignores SIGINT in its pool processes and handles it in a solo pool)."""
    from celery.exceptions import WorkerShutdown, WorkerTerminate

    if isinstance(exc, (WorkerShutdown, WorkerTerminate)):
        return False
    if isinstance(exc, KeyboardInterrupt) and signal.getsignal(signal.SIGINT) is (
        signal.default_int_handler
    ):
        return False  # a Ctrl-C could have raised it: the process is being interrupted
    try:
        from billiard.common import terminate_handler_fired
    except ImportError:  # a billiard that cannot tell: leave it as a shutdown
        return False
    return not terminate_handler_fired()


def cold_shutdown_raised_here() -> bool:
    """Whether a Celery worker's cold shutdown is under way in this thread: its signal
    handler runs in the worker's main thread, where a solo pool runs the task, and what it
    raises there (the solo pool's ``NotImplementedError`` from ``kill_job``, say) lands in
    the listener."""
    state = sys.modules.get("celery.worker.state")
    terminating = getattr(state, "should_terminate", None)
    return (
        terminating is not None
        and terminating is not False
        and threading.current_thread() is threading.main_thread()
    )


@dataclass
class RunContext:
    """Where an attempt runs and what it belongs to."""

    event_id: str
    messagio_type: str
    record: bool = True
    task_id: str = ""
    worker: str = ""
    replay_id: int | None = None
    #: Set when the whole envelope is known, so missing records can be recreated from it.
    envelope: dict[str, Any] | None = None
    #: Stop a listener at its time limit (in a worker's main thread only).
    enforce_time_limit: bool = False
    #: Claims already taken, by delivery id: the one statement that records a listener's
    #: outcome also claims the next listener of its group.
    claims: dict[str, Any] = field(default_factory=dict)
    #: Deliveries this run may have claimed in a statement whose reply was lost (it was
    #: sent again without the claim), with the start time that claim wrote: found running
    #: under this task since then, the claim is this run's own.
    maybe_claimed: dict[str, datetime.datetime] = field(default_factory=dict)
    #: Whether this task already wrote its missing records from the envelope (once is
    #: enough: a delivery still not recorded after that is recorded under another id).
    recreated: bool = False
    #: Set when an attempt of this run was taken over while it ran (requeued, or its
    #: message handed to another worker): the rest of the group is that copy's.
    taken_over: bool = False
    #: The delivery this run found running under another message (another copy of the
    #: group's, a requeue's or a retry's), if any: see messagio.tasks.deliver.
    held_elsewhere: str | None = None
    #: Retries go out as tasks of their own (in a worker): each gets its task id before its
    #: failure is recorded, by delivery id, and only that task may claim the delivery then.
    retries_as_tasks: bool = False
    retry_task_ids: dict[str, str] = field(default_factory=dict)


#: Seconds between the ListenerTimeoutErrors raised in a listener past its time limit.
TIMEOUT_REPEAT = 1.0
#: Shortest pause between repeats, whatever the limit: a repeat every few microseconds
#: would leave the listener no time to return.
REPEAT_AT_LEAST = 0.01
#: Longest time limit the timer takes (setitimer overflows past ~9.2e9 s on 64-bit Linux).
TIMER_AT_MOST = 1e9


class TimeLimit:
    """A time limit installed for one listener: :meth:`start` it as the first thing in the
    ``with`` body's ``try``, and :meth:`stop` it in that ``try``'s ``finally``.

    Every alarm then falls inside the body, where the limit's own cleanup is already in
    force: one due in ``with``'s enter or exit would skip it, leaving the repeating timer
    armed while the exception is held.
    """

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self.running = False
        #: Whether it was raised in the listener: past its limit, whatever the listener did
        #: with it (an ``except Exception:`` that went on, a query it interrupted).
        self.expired = False

    def exceeded(self) -> ListenerTimeoutError:
        return ListenerTimeoutError(
            f"the listener ran past its time limit of {self.seconds:g}s and was stopped"
        )

    def start(self) -> None:
        if self.seconds:
            self.running = True
            seconds = min(self.seconds, TIMER_AT_MOST)
            repeat = max(min(seconds, TIMEOUT_REPEAT), REPEAT_AT_LEAST)
            signal.setitimer(signal.ITIMER_REAL, seconds, repeat)

    def stop(self) -> None:
        self.running = False
        if self.seconds:
            signal.setitimer(signal.ITIMER_REAL, 0)


#: The time limit in force in this context (a sync run inside a limited listener runs
#: within that listener's limit).
enclosing_limit: ContextVar[TimeLimit | None] = ContextVar("messagio_time_limit", default=None)


@contextmanager
def time_limit(seconds: float | None) -> Iterator[TimeLimit]:
    """Raise ListenerTimeoutError in the running listener after ``seconds`` (SIGALRM), and
    again every second (or ``seconds``, if shorter) until it returns: a listener whose
    ``except Exception:`` swallows the first goes on no longer than that. The body starts
    and stops the :class:`TimeLimit` it is given.

    Works in the main thread of a worker process (prefork and solo pools), and not inside
    another limit (there is one timer); elsewhere the limit is not enforced.
    """
    if (
        not seconds
        or threading.current_thread() is not threading.main_thread()
        or not hasattr(signal, "setitimer")
        or signal.getitimer(signal.ITIMER_REAL) != (0.0, 0.0)
    ):
        yield TimeLimit(None)
        return

    limit = TimeLimit(seconds)

    def expire(signum: int, frame: Any) -> None:
        if limit.running:
            limit.expired = True
            raise limit.exceeded()
        # Due as it was stopped: never raised outside the listener, and not again.
        signal.setitimer(signal.ITIMER_REAL, 0)

    previous = signal.signal(signal.SIGALRM, expire)
    enclosing = enclosing_limit.set(limit)
    try:
        yield limit
    finally:
        enclosing_limit.reset(enclosing)
        limit.running = False
        try:
            signal.setitimer(signal.ITIMER_REAL, 0)
        finally:
            signal.signal(signal.SIGALRM, previous)


def load_messagio(payload: bytes, messagio_type: str) -> Any:
    """Verify and unpickle a payload; a class that moved becomes a clear error."""
    from messagio.payload import decode

    try:
        return decode(payload)
    except PayloadSignatureError:
        raise
    except (ImportError, AttributeError) as exc:
        raise MessagioClassMissingError(
            f"messagio class {messagio_type} no longer imports ({exc}) in this worker: a "
            "worker started before the class was added needs a restart; a class renamed or "
            "moved needs an alias at its old path to run or replay its events"
        ) from exc


def stops_the_task(exc: BaseException) -> bool:
    """Whether ``exc`` is how a gevent or eventlet pool stops the task (its Timeout,
    GreenletExit), to be let through rather than recorded as the listener's failure."""
    module = type(exc).__module__ or ""
    return module.split(".")[0] in ("gevent", "eventlet", "greenlet")


#: Per database alias, the atomic blocks open and whether autocommit was on.
TransactionState = dict[str, tuple[int, bool]]


def open_transactions() -> TransactionState:
    """The transactions open on this thread's database connections, before a listener runs."""
    from django.db import connections

    return {
        connection.alias: (len(connection.atomic_blocks), _autocommit(connection))
        for connection in connections.all(initialized_only=True)
    }


def _configured_autocommit(connection: Any) -> bool:
    return bool(connection.settings_dict.get("AUTOCOMMIT", True))


def _autocommit(connection: Any) -> bool:
    # Not get_autocommit(): it would connect. An unconnected one commits as its settings say.
    if connection.connection is None:
        return _configured_autocommit(connection)
    return bool(connection.autocommit)


def enter_savepoints() -> list[Any]:
    """A savepoint on each connection already in a transaction (a sync fire in the caller's,
    a test's, an eager task's), entered before a listener runs: a database error in the
    listener then rolls back its own writes only. Without one, Django marks the whole
    transaction for rollback, and neither its outcome nor the next listeners' could be
    written or run in it."""
    from django.db import connections, transaction

    entered = []
    for connection in connections.all(initialized_only=True):
        if connection.in_atomic_block and not connection.needs_rollback:
            block = transaction.atomic(using=connection.alias)
            # In a test case's transaction a listener's atomic(durable=True) is allowed
            # (Django's TestCase); atop this savepoint it would be refused.
            block._from_testcase = connection.atomic_blocks[-1]._from_testcase
            block.__enter__()
            entered.append(block)
    return entered


def exit_savepoints(entered: list[Any], error: BaseException | None) -> BaseException | None:
    """Leave the savepoints of :func:`enter_savepoints`, rolled back to them when the listener
    failed or left its transaction marked for rollback; the error to record for it."""
    from django.db import DatabaseError, transaction

    broken = []
    for block in reversed(entered):
        if error is None and transaction.get_connection(block.using).needs_rollback:
            broken.append(block.using)
        try:
            if error is None:
                block.__exit__(None, None, None)  # rolled back if marked for rollback
            else:
                block.__exit__(type(error), error, error.__traceback__)
        except DatabaseError as exc:  # the rollback failed: the listener's outcome
            error = error or exc
    if broken and error is None:
        error = ListenerTransactionRolledBackError(
            "the listener caught a database error inside the transaction it ran in "
            f"(on {', '.join(repr(alias) for alias in broken)}), which Django then marks for "
            "rollback: its writes there were rolled back, though it returned. Let the error "
            "propagate, or catch it outside a transaction.atomic() block of its own"
        )
    return error


def leave_transactions(
    before: TransactionState, savepoints: list[Any], error: BaseException | None
) -> BaseException | None:
    """After a listener: roll back what it left open, then leave the savepoints it ran in
    (rolled back to them on ``error``); the error to record for it."""
    left_open = close_transactions_left_open(before)
    return exit_savepoints(savepoints, error if error is not None else left_open)


def close_transactions_left_open(
    before: TransactionState,
) -> ListenerLeftTransactionOpenError | None:
    """Roll back what a listener left open on any connection (an atomic block entered and
    not exited, autocommit turned off), back to what was open before it ran; what says so.

    Left open, the transaction would take in messagio's records of this and every later
    delivery the process runs, and hold their locks, never committed. In a transaction
    opened before it, the listener runs in a savepoint (:func:`enter_savepoints`): an
    ``atomic(savepoint=False)`` it left open there marks the savepoint for rollback, which
    then undoes it, not the enclosing transaction.
    """
    from django.db import connections

    left: list[str] = []
    for connection in connections.all(initialized_only=True):
        # A connection first used by the listener started as its settings say.
        depth, autocommit = before.get(connection.alias) or (0, _configured_autocommit(connection))
        blocks = connection.atomic_blocks
        if len(blocks) > depth:
            left.append(f"{len(blocks) - depth} atomic block(s) on {connection.alias!r}")
            rollback = ListenerLeftTransactionOpenError("left open by the listener")
            while len(connection.atomic_blocks) > depth:
                connection.atomic_blocks[-1].__exit__(type(rollback), rollback, None)
        if not connection.in_atomic_block and _autocommit(connection) != autocommit:
            left.append(
                f"autocommit turned {'off' if autocommit else 'on'} on {connection.alias!r}"
            )
            if connection.connection is not None:
                connection.rollback()
            connection.set_autocommit(autocommit)
    if not left:
        return None
    return ListenerLeftTransactionOpenError(
        f"the listener returned with a database transaction still open ({', '.join(left)}): "
        "it was rolled back, and its writes there undone. Exit every transaction.atomic() "
        "it enters (a with statement), and give autocommit back"
    )


def _creates_group(envelope: dict[str, Any], spec: dict[str, Any]) -> bool:
    """Whether this listener's claim writes its group's Delivery rows: the first listener of
    a fire's group whose rows the firing process left to the worker."""
    return (
        envelope.get("deliveries_recorded") is False
        and spec["attempt"] == 1
        and spec["delivery"] == envelope["listeners"][0]["delivery"]
    )


def run_once(
    messagio: Any,
    spec: dict[str, Any],
    ctx: RunContext,
    *,
    listener: Callable[[Any], Any] | None = None,
    retry_on: tuple[type[BaseException], ...] | None = None,
    load_error: BaseException | None = None,
    next_spec: dict[str, Any] | None = None,
) -> tuple[ListenerOutcome | None, bool]:
    """Run one attempt of one listener. Returns its outcome (None when skipped because the
    delivery is already finished) and whether a retry is due. ``next_spec``, the listener
    that runs next in this group, is claimed along with this one's outcome."""
    from messagio import signals

    number = spec["attempt"]
    if ctx.record:
        from messagio.records import claim, claim_group, recreate_from_envelope

        claimed = ctx.claims.pop(spec["delivery"], None)
        claimed_at = ctx.maybe_claimed.pop(spec["delivery"], None)
        if claimed is None and claimed_at is not None:
            from messagio.records import own_claim

            claimed = own_claim(spec["delivery"], ctx.task_id, ctx.worker, claimed_at)
        envelope = ctx.envelope
        if claimed is None and envelope is not None and _creates_group(envelope, spec):
            claimed = claim_group(envelope, ctx.task_id, ctx.worker)
        elif claimed is None:
            claimed = claim(spec["delivery"], ctx.task_id, ctx.worker, ctx.replay_id)
        if claimed is None and ctx.envelope is not None and not ctx.recreated:
            ctx.recreated = True
            recreate_from_envelope(ctx.envelope)
            claimed = claim(spec["delivery"], ctx.task_id, ctx.worker, ctx.replay_id)
        if claimed is None:
            # Its listener's place in the event is held by a delivery of another id: the
            # group was written again (messagio_relay --lost-after) and this is its late
            # original message. That copy runs it.
            logger.warning(
                "messagio: delivery %s of %s is not recorded (its event's deliveries were "
                "written again under other ids); this message runs nothing for it",
                spec["delivery"],
                spec["id"],
            )
            return None, False
        if claimed.lost_too_often is not None:
            report_lost_too_often(
                claimed.lost_too_often,
                delivery_id=spec.get("delivery"),
                event_id=uuid.UUID(ctx.event_id),
                listener=spec["id"],
                messagio_type=ctx.messagio_type,
                messagio=messagio,
            )
            return None, False
        if not claimed.run:
            if claimed.status_before == "pending":
                logger.info(
                    "messagio: delivery %s of %s was taken by a replay since this message was "
                    "sent; that replay's message runs it",
                    spec["delivery"],
                    spec["id"],
                )
            else:
                logger.info(
                    "messagio: delivery %s of %s already %s; not run again",
                    spec["delivery"],
                    spec["id"],
                    claimed.status_before,
                )
                if claimed.status_before == "running":
                    ctx.held_elsewhere = spec["delivery"]
            return None, False
        number = claimed.number

    started_at = timezone.now()
    start = time.perf_counter()
    result: Any = None
    error: BaseException | None = None
    escaping: BaseException | None = None
    running_limit: TimeLimit | None = None
    savepoints = enter_savepoints()
    transactions = open_transactions()
    enclosing = enclosing_limit.get()
    enclosing_expired = enclosing is not None and enclosing.expired
    try:
        if load_error is not None:
            raise load_error
        if listener is None:
            listener = resolve_listener(spec["id"], spec["import_path"])
        limit = spec.get("time_limit") if ctx.enforce_time_limit else None
        running = listener_running.set(True)
        try:
            with time_limit(limit) as running_limit:
                try:
                    running_limit.start()
                    result = listener(messagio)
                finally:
                    # A plain store, not a call: Python runs a signal's handler where a call
                    # begins or ends, so a repeat due as the listener ends could interrupt a
                    # stop() before it marked the limit stopped, and then the with's exit,
                    # leaving the timer and its handler behind. time_limit disarms it.
                    running_limit.running = False
        finally:
            listener_running.reset(running)
    except Exception as exc:  # noqa: BLE001 - whatever a listener raises is recorded
        if not cold_shutdown_raised_here():
            error = exc
        else:
            # A solo pool's cold shutdown, whose handler runs in this thread and raises in
            # the listener (the pool cannot kill its own task): the worker's, not the
            # listener's. The delivery stays running; its message goes back.
            from celery.exceptions import WorkerTerminate
            from celery.worker import state

            stop = WorkerTerminate(state.should_terminate)
            setattr(stop, RECORDED_EXIT, False)
            leave_transactions(transactions, savepoints, stop)
            raise stop from exc
    except EXITS as exc:
        if not exit_is_the_listeners_own(exc):
            setattr(exc, RECORDED_EXIT, False)  # were it raised again after being recorded
            leave_transactions(transactions, savepoints, exc)
            raise  # a worker shutting down: the delivery stays running, its message returns
        error = escaping = exc
        setattr(exc, RECORDED_EXIT, True)
    except BaseException as exc:
        # GeneratorExit, asyncio's CancelledError from a listener's own event loop, a
        # project's own BaseException: recorded as its failure (raised out of the task, the
        # outcome would be lost and the listener taken for a lost worker's). Not gevent's or
        # eventlet's Timeout and GreenletExit, with which a pool stops a task.
        if stops_the_task(exc):
            leave_transactions(transactions, savepoints, exc)
            raise
        error = exc
    duration_ms = (time.perf_counter() - start) * 1000
    if running_limit is not None and running_limit.expired:
        if not isinstance(error, ListenerTimeoutError):
            # It went on past its limit (an except that swallowed it), or the limit broke
            # what it was doing into another error: timed out all the same.
            expired = running_limit.exceeded()
            expired.__context__ = error
            error = expired
    elif enclosing is not None and enclosing.expired and not enclosing_expired:
        # The limit of a listener running this one (a sync fire in it) fired while this ran:
        # stopped by it, whatever this listener did with the error.
        stopped = ListenerTimeoutError(
            f"stopped by the time limit of the listener running it: {enclosing.exceeded()}"
        )
        stopped.__context__ = error
        error = stopped
    error = leave_transactions(transactions, savepoints, error)

    will_retry = False
    if escaping is None and error is not None and not isinstance(error, NOT_RETRYABLE):
        if retry_on is not None:
            will_retry = spec["attempt"] <= spec["max_retries"] and isinstance(error, retry_on)
        else:
            will_retry = should_retry(spec, error)

    if ctx.record:
        from messagio.records import AttemptTakenOverError, finish, with_db_retry

        # Not when the listener ends the process: the next one goes in a message of its own.
        claim_next = next_spec["delivery"] if next_spec and escaping is None else None
        # Only the first try claims the next listener: a retry after a lost reply would
        # claim it twice and record a lost attempt that never ran.
        tries = 0
        claim_at = timezone.now()

        def finish_once_claiming(*args: Any, **kwargs: Any) -> Any:
            nonlocal tries
            tries += 1
            claiming = claim_next if tries == 1 else None
            return finish(*args, **kwargs, claim_next=claiming, claim_at=claim_at)

        retry_task_id = None
        if will_retry and ctx.retries_as_tasks:
            retry_task_id = ctx.retry_task_ids[spec["delivery"]] = str(uuid.uuid4())
        try:
            claimed_next = with_db_retry(
                finish_once_claiming,
                spec["delivery"],
                number,
                started_at,
                duration_ms,
                task_id=ctx.task_id,
                worker=ctx.worker,
                replay_id=ctx.replay_id,
                result=result,
                exception=error,
                will_retry=will_retry,
                retry_task_id=retry_task_id,
            )
        except AttemptTakenOverError as exc:
            logger.warning("messagio: %s", exc)
            ctx.taken_over = True
            claimed_next, will_retry = None, False
        if claim_next is not None and claimed_next is not None:
            ctx.claims[claim_next] = claimed_next
        elif claim_next is not None and tries > 1:
            # The first try's claim may have committed.
            ctx.maybe_claimed[claim_next] = claim_at

    delivery_id = spec.get("delivery") if ctx.record else None  # no row without records
    if ctx.taken_over:
        # Nothing of it was recorded: the copy that took it over sends the signal of the
        # outcome it records (a failure here is no final failure to alert on).
        if error is not None:
            logger.warning(
                "messagio: listener %s failed for %s (attempt %d) after its attempt was "
                "taken over; the other copy's outcome is recorded",
                spec["id"],
                ctx.messagio_type,
                number,
                exc_info=error,
            )
    elif error is None:
        send_robustly(
            signals.delivery_succeeded,
            sender=signal_sender(messagio, ctx.messagio_type),
            delivery_id=delivery_id,
            event_id=uuid.UUID(ctx.event_id),
            listener=spec["id"],
            messagio=messagio,
            result=result,
        )
    else:
        if will_retry:
            logger.warning(
                "messagio: listener %s failed for %s (attempt %d), retrying: %r",
                spec["id"],
                ctx.messagio_type,
                number,
                error,
            )
        else:
            logger.error(
                "messagio: listener %s failed for %s (attempt %d)",
                spec["id"],
                ctx.messagio_type,
                number,
                exc_info=error,
            )
        signal_failed(
            error,
            delivery_id=delivery_id,
            event_id=uuid.UUID(ctx.event_id),
            listener=spec["id"],
            messagio=messagio,
            messagio_type=ctx.messagio_type,
            will_retry=will_retry,
        )
    if escaping is not None:
        raise escaping
    outcome = ListenerOutcome(
        spec["id"], error is None, result=result, exception=error, attempts=spec["attempt"]
    )
    return outcome, will_retry


def send_robustly(signal: Any, **kwargs: Any) -> None:
    """``signal.send_robust``, in a savepoint of each transaction open here (a sync fire in
    the caller's, a test's): a receiver's database error, which send_robust logs and skips,
    would otherwise leave the transaction aborted (PostgreSQL), and with it the records of
    this outcome and the listeners after it. Rolled back to it only when a receiver's query
    failed: another error leaves the receivers' writes and on_commit hooks in place."""
    from django.db import DatabaseError

    savepoints = enter_savepoints()
    responses: list[tuple[Any, Any]] = []
    try:
        responses = signal.send_robust(**kwargs)
    finally:
        failed = next((r for _, r in responses if isinstance(r, DatabaseError)), None)
        exit_savepoints(savepoints, failed)


def signal_sender(messagio: Any, messagio_type: str) -> type | None:
    """Whom the delivery signals are sent by, as ``messagio_fired`` (and Django's model
    signals, by the model class): the messagio's class, so that a receiver can connect to one
    type. When no messagio could be loaded (or none was, by the relay): the subscribed class
    of that name, if any."""
    if messagio is not None:
        return type(messagio)
    from messagio.registry import registry

    return next((t for t in registry.messagio_types() if t.get_name() == messagio_type), None)


def signal_failed(
    exception: BaseException,
    *,
    delivery_id: str | None,
    event_id: uuid.UUID,
    listener: str,
    messagio: Any,
    messagio_type: str,
    will_retry: bool = False,
) -> None:
    """Send ``delivery_failed`` for one delivery's failed attempt (final unless
    ``will_retry``)."""
    from messagio import signals

    send_robustly(
        signals.delivery_failed,
        sender=signal_sender(messagio, messagio_type),
        delivery_id=delivery_id,
        event_id=event_id,
        listener=listener,
        messagio=messagio,
        exception=exception,
        will_retry=will_retry,
    )


def report_lost_too_often(
    error: BaseException,
    *,
    delivery_id: str | None,
    event_id: uuid.UUID,
    listener: str,
    messagio_type: str,
    messagio: Any = None,
) -> None:
    """Report a delivery failed, not run again, because its workers kept dying under it
    (from a worker's claim, or from a requeue, which loads no payload)."""
    logger.error("messagio: listener %s failed for %s: %s", listener, messagio_type, error)
    signal_failed(
        error,
        delivery_id=delivery_id,
        event_id=event_id,
        listener=listener,
        messagio=messagio,
        messagio_type=messagio_type,
    )


def run_all_here(
    messagio: Any,
    specs: list[dict[str, Any]],
    ctx: RunContext,
    listeners: list[Callable[[Any], Any]],
    retry_on: list[tuple[type[BaseException], ...]],
) -> list[ListenerOutcome]:
    """Run listeners in this process, in order, retrying each at once per its policy."""
    outcomes = []
    for position, (spec, listener, exc_types) in enumerate(
        zip(specs, listeners, retry_on, strict=True)
    ):
        while True:
            try:
                outcome, will_retry = run_once(
                    messagio, spec, ctx, listener=listener, retry_on=exc_types
                )
            except EXITS as exc:
                if getattr(exc, RECORDED_EXIT, False) and not ctx.taken_over:
                    _not_run(messagio, specs[position + 1 :], ctx, spec["id"], exc)
                raise
            if not will_retry:
                break
            spec = dict(spec, attempt=spec["attempt"] + 1)
        if outcome is not None:
            outcomes.append(outcome)
        if ctx.taken_over:
            break  # the requeue that took it over carries the rest
    return outcomes


def _not_run(
    messagio: Any, specs: list[dict[str, Any]], ctx: RunContext, exited: str, exc: BaseException
) -> None:
    """Record the listeners after one that ended the process as failed, never run: nothing
    else would run them (in-process runs have no message), and a replay can. Each is a
    final failure, signalled as one (without records, only signalled)."""
    if not ctx.record:  # nothing to record: each is signalled, without a delivery id
        for spec in specs:
            signal_failed(
                exc,
                delivery_id=None,
                event_id=uuid.UUID(ctx.event_id),
                listener=spec["id"],
                messagio=messagio,
                messagio_type=ctx.messagio_type,
            )
        return
    from messagio.models import Delivery
    from messagio.records import exception_name

    by_id = {str(spec["delivery"]): spec for spec in specs}
    pending = Delivery.objects.filter(pk__in=list(by_id), status=Delivery.Status.PENDING)
    ids = [str(pk) for pk in pending.values_list("pk", flat=True)]
    now = timezone.now()
    Delivery.objects.filter(pk__in=ids, status=Delivery.Status.PENDING).update(
        status=Delivery.Status.FAILED,
        # Started (and ended) when it was given up, with 0 attempts: the admin's lists and
        # counts of recent failures, which go by start, find it among them.
        started_at=now,
        finished_at=now,
        error_type=exception_name(exc),
        error=f"not run: {exited} ended the process before it ({exc!r})",
    )
    for delivery_id in ids:
        signal_failed(
            exc,
            delivery_id=delivery_id,
            event_id=uuid.UUID(ctx.event_id),
            listener=by_id[delivery_id]["id"],
            messagio=messagio,
            messagio_type=ctx.messagio_type,
        )
