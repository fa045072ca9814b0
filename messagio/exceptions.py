"""Exceptions raised by messagio."""

from __future__ import annotations

from typing import Any


class MessageProcessingError(Exception):
    """One or more listeners failed while a messagio was processed synchronously."""

    def __init__(self, message: str, failures: list | None = None) -> None:
        super().__init__(message)
        #: ``[(listener_id, exception), ...]`` of the listeners that failed.
        self.failures = failures or []


class PayloadError(TypeError):
    """A messagio cannot travel: it does not pickle, or its payload is too large."""


class PayloadSignatureError(ValueError):
    """A stored or received payload is unsigned or mis-signed; it is never unpickled."""


class ListenerNotFoundError(LookupError):
    """A worker could not find a listener by its id or dotted path."""


class ListenerTimeoutError(Exception):
    """A listener ran past its time limit in a worker and was stopped."""


class ListenerLeftTransactionOpenError(RuntimeError):
    """A listener returned with a database transaction of its own still open (an atomic block
    entered and not exited, autocommit turned off): rolled back, its writes there undone."""


class ListenerTransactionRolledBackError(RuntimeError):
    """A listener caught a database error inside the transaction it ran in (a sync fire in
    the caller's): Django marked the transaction for rollback, so the listener's writes
    were rolled back to where it began, though it returned."""


class CeleryRetryRefusedError(RuntimeError):
    """A listener called Celery's ``retry()`` on the task running its group."""


class PublishRefusedError(Exception):
    """The broker refused one of the envelopes published one at a time; ``sent`` holds the
    (envelope, task id) of those that went out before it, ``cause`` the refusal."""

    def __init__(self, sent: list[tuple[dict[str, Any], str]], cause: Exception) -> None:
        super().__init__(f"the broker refused a publish ({cause!r})")
        self.sent = sent
        self.cause = cause

    @property
    def published(self) -> int:
        return len(self.sent)


class WorkerLostTooOftenError(Exception):
    """A delivery's worker died under it MAX_LOST_ATTEMPTS times: it is failed, not run again."""

    def __init__(self, lost: int) -> None:
        super().__init__(
            f"the worker running this listener was lost {lost} times (killed: out of memory, "
            "a crash in native code; its connection lost; or running past the broker's "
            "visibility_timeout / consumer_timeout, messagio.W007: see the attempts); it is "
            "not run again (MESSAGIO['MAX_LOST_ATTEMPTS']). Find the cause, then replay it"
        )
        self.lost = lost
