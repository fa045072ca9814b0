"""Testing helpers for messagio's users: capture fired messagios instead of running listeners.

    from messagio.testing import capture_messagios

    with capture_messagios() as fired:
        place_order()
    fired.assert_fired(OrderPlaced, order_id=42)

With pytest, the ``messagio_fired`` fixture does the same (registered as a pytest plugin).
"""

from __future__ import annotations

import dataclasses
import pickle
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.db import transaction

from messagio.center import (
    AbstractMessageCenter,
    MessageCenter,
    _overrides,
    configured_center,
    refuse_in_async_code,
)
from messagio.message import Messagio
from messagio.report import DispatchReport


class FiredMessagios:
    """The messagios fired while capturing, in order, like Django's ``mail.outbox``.

    A fire inside ``transaction.atomic()`` counts once made and is forgotten when its block
    rolls back, as a real fire is (Django's TestCase included: its test transaction never
    commits, so what a test fires stays captured). Fires from every thread are captured.
    """

    def __init__(self) -> None:
        self._captured: list[_Captured] = []

    @property
    def messagios(self) -> list[Messagio]:
        """What was fired, less what a rollback took back."""
        return [c.messagio for c in self._captured if c.stands()]

    def __len__(self) -> int:
        return len(self.messagios)

    def __iter__(self) -> Iterator[Messagio]:
        return iter(self.messagios)

    def __getitem__(self, index: int) -> Messagio:
        return self.messagios[index]

    def of_type(self, messagio_type: type[Messagio], **fields: Any) -> list[Messagio]:
        """Captured messagios of exactly this type whose fields equal ``fields``."""
        _check_fields(messagio_type, fields)
        return [
            m
            for m in self.messagios
            if type(m) is messagio_type
            and all(getattr(m, name, _MISSING) == value for name, value in fields.items())
        ]

    def assert_fired(
        self, messagio_type: type[Messagio], count: int | None = None, /, **fields: Any
    ) -> list[Messagio]:
        """Assert such a messagio was fired (``count`` times, if given); return the matches.

        ``count`` is positional (``assert_fired(OrderPlaced, 2, order_id=1)``), so that a
        field named ``count`` can be matched like any other.
        """
        if count is not None and count < 1:
            name = messagio_type.__name__
            raise ValueError(f"count must be 1 or more; for none, assert_not_fired({name}, ...)")
        matches = self.of_type(messagio_type, **fields)
        if not matches or (count is not None and len(matches) != count):
            wanted = f"{messagio_type.__name__}({_format(fields)})"
            times = f" {count} time(s)" if count is not None else ""
            raise AssertionError(
                f"Expected {wanted} to be fired{times}; found {len(matches)}. "
                f"Fired: {_listing(self.messagios)}"
            )
        return matches

    def assert_not_fired(self, messagio_type: type[Messagio], **fields: Any) -> None:
        """Assert no such messagio was fired."""
        matches = self.of_type(messagio_type, **fields)
        if matches:
            raise AssertionError(
                f"Expected no {messagio_type.__name__}({_format(fields)}); found "
                f"{len(matches)}: {_listing(matches)}"
            )

    def clear(self) -> None:
        self._captured.clear()


class _Captured:
    """One captured fire; in a transaction, it stands while its on-commit mark does."""

    def __init__(self, messagio: Messagio, connection: Any) -> None:
        self.messagio = messagio
        self.connection = connection
        self.committed = False
        if connection is not None:
            # Django drops the callbacks of a block that rolls back: the mark tells.
            transaction.on_commit(self._commit, using=connection.alias)

    def _commit(self) -> None:
        self.committed = True

    def stands(self) -> bool:
        if self.connection is None or self.committed:
            return True
        return any(callback == self._commit for _, callback, _ in self.connection.run_on_commit)


_MISSING = object()
#: How many captured messagios a failure message lists.
LISTED = 20


def _check_fields(messagio_type: type[Messagio], fields: dict[str, Any]) -> None:
    """A dataclass's unknown field names are a mistake: they would match nothing, silently."""
    if not dataclasses.is_dataclass(messagio_type):
        return
    known = {f.name for f in dataclasses.fields(messagio_type)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise TypeError(
            f"{messagio_type.__name__} has no field {', '.join(map(repr, unknown))} "
            f"(its fields: {', '.join(sorted(known)) or 'none'}); to assert how many times it "
            f"was fired, give the number second: assert_fired({messagio_type.__name__}, 2, ...)"
        )


def _format(fields: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in fields.items())


def _describe(messagio: Messagio) -> str:
    """A dataclass's repr; for another class, its attributes rather than an address."""
    if dataclasses.is_dataclass(messagio) or not hasattr(messagio, "__dict__"):
        return repr(messagio)
    return f"{type(messagio).__name__}({_format(vars(messagio))})"


def _listing(messagios: list[Messagio]) -> str:
    if not messagios:
        return "nothing"
    shown = ", ".join(_describe(m) for m in messagios[:LISTED])
    more = len(messagios) - LISTED
    return f"{shown} and {more} more" if more > 0 else shown


class CapturingMessageCenter(AbstractMessageCenter):
    """Records fired messagios and runs no listener. Payloads must still pickle."""

    def __init__(self, fired: FiredMessagios) -> None:
        self.fired = fired

    def send(self, messagio: Messagio, sync: bool = False, **options: Any) -> DispatchReport:
        from messagio.conf import get_setting
        from messagio.payload import dumps

        # raise_errors: taken by fire(sync=True) and by the in-process center's fire(); the
        # Celery center's fire() refuses it, and so does a capture in its place.
        takes_raise_errors = sync or not isinstance(configured_center(), MessageCenter)
        if set(options) - ({"raise_errors"} if takes_raise_errors else set()):
            raise TypeError(f"Unknown fire() options: {', '.join(sorted(options))}")
        self._check_messagio(messagio)
        refuse_in_async_code(messagio)
        # The refusals a real fire would give; and what was fired, as a listener would get
        # it: a copy, so that changing the object afterwards changes nothing captured.
        # (These bytes were pickled here and now: nothing stored is unpickled.)
        data = dumps(messagio, get_setting("MAX_PAYLOAD_BYTES"))
        fired = pickle.loads(data)  # noqa: S301
        self.fired._captured.append(_Captured(fired, _transaction_of_the_records()))
        return DispatchReport(uuid.uuid4(), type(messagio).get_name(), sync=sync)


def _transaction_of_the_records() -> Any:
    """The connection whose transaction a real fire would be recorded in, when one is open."""
    from messagio.records import db_alias

    connection = transaction.get_connection(db_alias())
    return connection if connection.in_atomic_block else None


@contextmanager
def capture_messagios() -> Iterator[FiredMessagios]:
    """Capture every messagio fired inside the block; no listener runs, nothing is recorded."""
    fired = FiredMessagios()
    center = CapturingMessageCenter(fired)
    _overrides.append(center)
    try:
        yield fired
    finally:
        _overrides.remove(center)


try:
    import pytest
except ImportError:  # pragma: no cover - pytest is optional for users
    pass
else:

    @pytest.fixture
    def messagio_fired() -> Iterator[FiredMessagios]:
        """The messagios fired during the test, captured instead of delivered."""
        with capture_messagios() as fired:
            yield fired
