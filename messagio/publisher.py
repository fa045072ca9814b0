"""How a fire's task message reaches the broker: on a producer messagio keeps for the next.

``apply_async`` acquires a producer from Celery's pool and revives it, merges the task's
options, reads Celery's settings anew and builds an AsyncResult on every call, and kombu
binds a copy of the queue to declare it: about a fifth of what a whole fire costs
(bench/RESULTS.md, "Measured at stop 16"). A fire publishes one message of one known
task, so messagio keeps idle producers of its own, builds the message with Celery's
protocol (``app.amqp.create_task_message``), routes it with Celery's router and sends it
with ``app.amqp.send_task_message``: task routes, the publish retry policy, the
``before_task_publish``/``after_task_publish`` signals and task-sent events work as they
do for ``apply_async``.

``apply_async`` still publishes whenever this path could differ from it: in eager mode,
with a countdown, an ``expires`` set on the task or its results stored, a soft time limit
past the hard one (which it refuses), when ``apply_async``, ``send_task`` or
``shadow_name`` is overridden or wrapped, on the class or the instance (a project's Task
class, ``mock.patch.object``, Sentry's tracing), and when this process already holds
``broker_pool_limit`` producers of the app (0 or None: none).
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from collections import deque
from typing import Any

from kombu import Queue, pools
from kombu.common import Broadcast
from kombu.utils.uuid import uuid


class KeptProducer:
    """A producer kept between publishes, and the queues it has bound to its channel.

    Celery has kombu declare the queue it routes a task to on every publish (cached per
    connection), binding a copy of the queue to the channel first: a fifth of a publish.
    Handed a queue already bound, kombu skips the copy, and still declares it again on a
    new connection after a reconnect."""

    def __init__(self, producer: Any) -> None:
        self.producer = producer
        self.published = False
        self._bound: dict[str, tuple[Any, Any]] = {}

    def declare(self, queue: Any) -> list[Any] | None:
        """What to declare before publishing to ``queue``: the queue bound to this channel,
        or None (Celery's own choice) until a first publish has opened the channel."""
        if not self.published or not isinstance(queue, Queue) or isinstance(queue, Broadcast):
            return None
        known = self._bound.get(queue.name)
        if known is None or known[0] is not queue:
            known = self._bound[queue.name] = (queue, queue.bind(self.producer.channel))
        return [known[1]]


class KeptProducers:
    """The idle producers of one Celery app in this process, at most ``limit`` in all.

    Taken and given back whole (a deque's pop and append are atomic), so threads never
    share one; a producer whose publish raised is closed, not kept. An app no longer used
    takes them with it, their sockets closed by the garbage collector, as Celery's pooled
    connections are at exit: closing them politely could wait on a broker that blocks."""

    def __init__(self, app: Any) -> None:
        self._app = weakref.ref(app)
        self.pid = os.getpid()
        self.limit = app.conf.broker_pool_limit or 0
        self.idle: deque[KeptProducer] = deque()
        self.count = 0
        self.closed = False
        self._lock = threading.Lock()

    def acquire(self) -> KeptProducer | None:
        """An idle producer, or a new one; None once ``limit`` are out."""
        try:
            return self.idle.pop()
        except IndexError:
            pass
        app = self._app()
        with self._lock:
            if app is None or self.closed or self.count >= self.limit:
                return None
            self.count += 1
        try:
            connection = app.connection_for_write()
            return KeptProducer(app.amqp.Producer(connection, auto_declare=False))
        except BaseException:
            with self._lock:
                self.count -= 1
            raise

    def release(self, kept: KeptProducer) -> None:
        with self._lock:
            if not self.closed:
                self.idle.append(kept)
                return
        self.discard(kept)

    def discard(self, kept: KeptProducer) -> None:
        with self._lock:
            self.count -= 1
        connection = kept.producer.connection
        # Not every Exception: a task's SoftTimeLimitExceeded must reach the task.
        with contextlib.suppress(
            OSError, *connection.connection_errors, *connection.channel_errors
        ):
            connection.release()

    # What kombu asks of a pool when its pools are reset or resized (kombu.pools.reset,
    # set_limit): the next publish then builds a new KeptProducers from the app's settings.
    def force_close_all(self) -> None:
        if self.pid != os.getpid():
            self.closed = True  # a forked child's: the parent's connections, not its to close
            return
        with self._lock:  # a release after this discards its producer
            self.closed = True
        while True:
            try:
                kept = self.idle.pop()
            except IndexError:
                return
            self.discard(kept)

    def resize(self, limit: int) -> None:
        self.limit = limit or 0


#: Per Celery app.
_kept: weakref.WeakKeyDictionary[Any, KeptProducers] = weakref.WeakKeyDictionary()
_creating = threading.Lock()


def _new_lock_in_the_child() -> None:
    global _creating
    _creating = threading.Lock()  # a fork while another thread held it leaves it held


os.register_at_fork(after_in_child=_new_lock_in_the_child)


class KeptGroup:
    """What ``kombu.pools.reset()`` and ``set_limit()`` ask of a group of pools, so that
    they close and resize these too (Celery's tests and a project's call them). Closed
    ones stay in ``_kept`` until their next use replaces them: one a publish made while a
    reset ran stays where the next reset finds it."""

    def values(self) -> list[KeptProducers]:
        with _creating:
            return list(_kept.values())

    def clear(self) -> None:
        pass


kept_group = pools.register_group(KeptGroup())


def kept_producers(app: Any) -> KeptProducers:
    kept = _kept.get(app)
    if kept is None or kept.closed or kept.pid != os.getpid():
        with _creating:  # two threads' first fires must not each make their own
            kept = _kept.get(app)
            if kept is None or kept.closed or kept.pid != os.getpid():
                # After a fork the parent's connections are not ours to use or to close.
                kept = _kept[app] = KeptProducers(app)
    return kept


def _celerys_own(method: Any, qualname: str) -> bool:
    """Whether a bound method is Celery's own function, neither overridden nor wrapped on
    the class or the instance."""
    function = getattr(method, "__func__", None)
    return (
        (getattr(function, "__module__", None) or "").startswith("celery.")
        and getattr(function, "__qualname__", None) == qualname
        and not hasattr(function, "__wrapped__")
    )


def publish_task(
    task: Any, args: tuple[Any, ...], options: dict[str, Any], task_id: str | None = None
) -> str | None:
    """Publish ``task(*args)`` as ``apply_async`` would, on a kept producer; its task id,
    or None when ``apply_async`` has to (see the module's docstring)."""
    if options.get("countdown"):
        return None  # delayed delivery (native on quorum queues) stays Celery's
    task = getattr(task, "_get_current_object", lambda: task)()  # shared_task's proxy
    app = task._get_app()
    if not (
        _celerys_own(task.apply_async, "Task.apply_async")
        and _celerys_own(task.shadow_name, "Task.shadow_name")
        and _celerys_own(app.send_task, "Celery.send_task")
        and task.ignore_result
    ):
        return None
    conf = app.conf
    if conf.task_always_eager:
        return None
    options = {
        **{key: value for key, value in task._get_exec_options().items() if value is not None},
        **options,
    }
    if options.pop("expires", None) is not None:
        return None
    time_limit = options.pop("time_limit", None)
    soft_time_limit = options.pop("soft_time_limit", None)
    if time_limit and soft_time_limit and soft_time_limit > time_limit:
        return None  # apply_async refuses it (ValueError)
    producers = kept_producers(app)
    kept = None
    try:
        kept = producers.acquire()
        if kept is None:
            return None
        task_id = task_id or uuid()
        options = app.amqp.router.route(options, task.name, args, {}, task)
        root_id = parent_id = None
        parent = app.current_worker_task  # a fire from inside a task: its child, as Celery says
        if parent:
            root_id = parent.request.root_id or parent.request.id
            parent_id = parent.request.id
        message = app.amqp.create_task_message(
            task_id,
            task.name,
            args,
            {},
            reply_to=app.thread_oid,
            time_limit=time_limit,
            soft_time_limit=soft_time_limit,
            create_sent_event=conf.task_send_sent_event,
            root_id=root_id,
            parent_id=parent_id,
            ignore_result=True,
            **options,  # argsrepr and kwargsrepr among them, which Celery also sends on
        )
        producer = kept.producer
        declare = kept.declare(options.get("queue"))
        with producer.connection._reraise_as_library_errors():
            app.amqp.send_task_message(producer, task.name, message, declare=declare, **options)
    except BaseException:
        if kept is not None:
            producers.discard(kept)
        raise
    kept.published = True
    producers.release(kept)
    if parent:  # the parent's request.children, as apply_async leaves them
        result = task.AsyncResult(task_id)
        result.ignored = True  # its get() returns at once: a deliver task stores nothing
        parent.add_trail(result)
    return task_id
