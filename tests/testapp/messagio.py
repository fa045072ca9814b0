"""Messagios and listeners of the test app, autodiscovered by test processes and workers."""

import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings

from messagio import TASK_PRIORITY, Messagio, listen_to_message
from tests.testapp.models import Call


def record(listener: str, event: Any, note: str = "") -> None:
    Call.objects.create(token=event.token, listener=listener, note=note)


@dataclass
class Ping(Messagio):
    token: str
    notes: list = field(default_factory=list)


class PlainPing(Messagio):
    """A messagio that is not a dataclass, like the README's ActionPerformed."""

    def __init__(self, token: str, action_name: str = "foo"):
        self.token = token
        self.action_name = action_name


@dataclass
class WithModel(Messagio):
    token: str
    obj: Any


@dataclass
class Flaky(Messagio):
    token: str
    fail_times: int


@dataclass
class Unheard(Messagio):
    token: str


@dataclass
class BacklogLow(Messagio):
    token: str
    n: int


@dataclass
class BacklogHigh(Messagio):
    token: str
    n: int


@listen_to_message(Ping)
def first(event: Ping) -> str:
    record("first", event)
    event.notes.append("first")
    return "first done"


@listen_to_message(Ping)
def second(event: Ping) -> None:
    record("second", event)
    event.notes.append("second")


@listen_to_message(Ping)
def broken(event: Ping) -> None:
    record("broken", event)
    raise RuntimeError("broken listener fails on purpose")


@listen_to_message(Ping)
def third(event: Ping) -> None:
    record("third", event)
    event.notes.append("third")


@listen_to_message(Ping, PlainPing)
def of_many(event: Ping | PlainPing) -> None:
    record("of_many", event, note=type(event).__name__)


@listen_to_message(WithModel)
def with_model(event: WithModel) -> None:
    record("with_model", event, note=f"{type(event.obj).__name__}:{event.obj.pk}")


@listen_to_message(Flaky, autoretry_for=(ConnectionError,), max_retries=3, default_retry_delay=0.1)
def flaky(event: Flaky) -> None:
    failures_so_far = Call.objects.filter(token=event.token, listener="flaky").count()
    record("flaky", event)
    if failures_so_far < event.fail_times:
        raise ConnectionError(f"flaky fails {event.fail_times} times")


@listen_to_message(Flaky)
def flaky_sibling(event: Flaky) -> None:
    record("flaky_sibling", event)


@listen_to_message(BacklogLow, priority=TASK_PRIORITY.LESS - 2, queue=settings.TEST_PRIORITY_QUEUE)
def low(event: BacklogLow) -> None:
    record("low", event, note=str(event.n))


@listen_to_message(BacklogHigh, priority=TASK_PRIORITY.EPIC, queue=settings.TEST_PRIORITY_QUEUE)
def high(event: BacklogHigh) -> None:
    record("high", event, note=str(event.n))


@dataclass
class Split(Messagio):
    """Listeners of two priorities: two groups, two tasks."""

    token: str


@listen_to_message(Split, priority=TASK_PRIORITY.EPIC)
def split_urgent(event: Split) -> None:
    record("split_urgent", event)


@listen_to_message(Split)
def split_first(event: Split) -> None:
    record("split_first", event)


@listen_to_message(Split)
def split_second(event: Split) -> None:
    record("split_second", event)


@dataclass
class Fixable(Messagio):
    token: str


@listen_to_message(Fixable)
def fixable(event: Fixable) -> str:
    """Fails until a test "deploys the fix" (a Call row named fix-deployed for the token)."""
    record("fixable", event)
    if not Call.objects.filter(token=event.token, listener="fix-deployed").exists():
        raise ValueError("bug not fixed yet")
    return "fixed"


@dataclass
class Slow(Messagio):
    token: str


@listen_to_message(Slow, queue=settings.TEST_CRASH_QUEUE)
def slow(event: Slow) -> None:
    """Runs until a test releases it (a Call row named release), so a test can kill its worker."""
    record("slow-started", event)
    deadline = time.monotonic() + 120
    while not Call.objects.filter(token=event.token, listener="release").exists():
        if time.monotonic() > deadline:
            raise TimeoutError("never released")
        time.sleep(0.05)
    record("slow-finished", event)


@dataclass
class SplitHeld(Messagio):
    """Two groups, the urgent one of two listeners whose first waits for a test's release."""

    token: str


@listen_to_message(SplitHeld, priority=TASK_PRIORITY.EPIC)
def held_first(event: SplitHeld) -> None:
    slow(event)


@listen_to_message(SplitHeld, priority=TASK_PRIORITY.EPIC)
def held_after(event: SplitHeld) -> None:
    record("held_after", event)


@listen_to_message(SplitHeld)
def held_regular(event: SplitHeld) -> None:
    record("held_regular", event)


@dataclass
class SlowPair(Messagio):
    """Two listeners in one task: a slow one a test can kill its worker in, and one after it."""

    token: str


@listen_to_message(SlowPair, queue=settings.TEST_CRASH_QUEUE)
def slow_first(event: SlowPair) -> None:
    slow(event)


@listen_to_message(SlowPair, queue=settings.TEST_CRASH_QUEUE)
def after_slow(event: SlowPair) -> None:
    record("after-slow", event)


@dataclass
class Exits(Messagio):
    """A listener that ends its process (as argparse does on bad input), and one after it."""

    token: str


@listen_to_message(Exits, queue=settings.TEST_CRASH_QUEUE)
def exits(event: Exits) -> None:
    record("exits", event)
    sys.exit(3)


@listen_to_message(Exits, queue=settings.TEST_CRASH_QUEUE)
def after_exit(event: Exits) -> None:
    record("after-exit", event)


@dataclass
class KillsItsWorker(Messagio):
    """A listener that kills the pool process it runs in, every time (as the out-of-memory
    killer would), and one after it."""

    token: str


@listen_to_message(KillsItsWorker, queue=settings.TEST_CRASH_QUEUE)
def kills_its_worker(event: KillsItsWorker) -> None:
    record("kills", event)
    os.kill(os.getpid(), signal.SIGKILL)


@listen_to_message(KillsItsWorker, queue=settings.TEST_CRASH_QUEUE)
def after_the_kill(event: KillsItsWorker) -> None:
    record("after-kill", event)


@dataclass
class Hang(Messagio):
    token: str


@listen_to_message(Hang, time_limit=0.5)
def hangs(event: Hang) -> None:
    record("hangs", event)
    time.sleep(60)
    record("hangs-woke", event)


@dataclass
class FileGated(Messagio):
    """Its listener waits for a file, not the database, so a test can cut the database."""

    token: str
    folder: str


@listen_to_message(FileGated, queue=settings.TEST_CRASH_QUEUE)
def file_gated(event: FileGated) -> str:
    folder = Path(event.folder)
    with open(folder / "runs", "a") as runs:
        runs.write("run\n")
    (folder / "started").touch()
    deadline = time.monotonic() + 120
    while not (folder / "release").exists():
        if time.monotonic() > deadline:
            raise TimeoutError("never released")
        time.sleep(0.05)
    return "released"


@dataclass
class LoadPing(Messagio):
    token: str


@listen_to_message(LoadPing, queue=settings.TEST_LOAD_QUEUE)
def count_load(event: LoadPing) -> None:
    record("load", event)


@dataclass
class RetriesItsTask(Messagio):
    token: str


@listen_to_message(RetriesItsTask)
def retries_its_task(event: RetriesItsTask) -> None:
    """Calls Celery's retry() on the task running it, as a Celery task would."""
    from celery import current_task

    record("retries_its_task", event)
    current_task.retry(countdown=0.1)


@listen_to_message(RetriesItsTask)
def after_retries_its_task(event: RetriesItsTask) -> None:
    record("after_retries_its_task", event)


@dataclass
class Misbehaves(Messagio):
    """A listener that misbehaves as ``how`` says, and one after it in its group."""

    token: str
    how: str


class OwnBaseException(BaseException):
    """A project's own BaseException, as some frameworks raise for control flow."""


@listen_to_message(Misbehaves, time_limit=0.5)
def misbehaves(event: Misbehaves) -> str:
    from django.db import transaction

    if event.how == "leaves atomic open":
        transaction.atomic().__enter__()
        record("inside", event)
    elif event.how == "leaves autocommit off":
        transaction.set_autocommit(False)
        record("inside", event)
    elif event.how == "raises GeneratorExit":
        raise GeneratorExit("from the listener")
    elif event.how == "raises its own BaseException":
        raise OwnBaseException("from the listener")
    elif event.how == "runs a sync fire past its time limit":
        SleepsInside(event.token).fire(sync=True)
    elif event.how == "swallows its time limit":
        swallowed = 0
        deadline = time.monotonic() + 1.2
        while time.monotonic() < deadline:
            try:
                time.sleep(0.05)
            except Exception:  # noqa: BLE001 - the per-item loop the time limit must beat
                swallowed += 1
        return f"done anyway, swallowed {swallowed}"
    return "behaved"


@listen_to_message(Misbehaves)
def after_misbehaving(event: Misbehaves) -> None:
    record("after", event)


@dataclass
class SleepsInside(Messagio):
    """Fired with sync=True by a listener with a time limit; its own has none."""

    token: str


@listen_to_message(SleepsInside)
def sleeps_inside(event: SleepsInside) -> None:
    time.sleep(1.0)
