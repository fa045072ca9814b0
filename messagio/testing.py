"""Testing helpers for messagio's users: capture fired messagios instead of running listeners.

    from messagio.testing import capture_messagios

    with capture_messagios() as fired:
        place_order()
    fired.assert_fired(OrderPlaced, order_id=42)

With pytest, the ``messagio_fired`` fixture does the same (registered as a pytest plugin).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from messagio.center import AbstractMessageCenter, _overrides
from messagio.message import Messagio
from messagio.report import DispatchReport


class FiredMessagios:
    """The messagios fired while capturing, in order, like Django's ``mail.outbox``."""

    def __init__(self) -> None:
        self.messagios: list[Messagio] = []

    def __len__(self) -> int:
        return len(self.messagios)

    def __iter__(self) -> Iterator[Messagio]:
        return iter(self.messagios)

    def __getitem__(self, index: int) -> Messagio:
        return self.messagios[index]

    def of_type(self, messagio_type: type[Messagio], **fields: Any) -> list[Messagio]:
        """Captured messagios of exactly this type whose fields equal ``fields``."""
        return [
            m
            for m in self.messagios
            if type(m) is messagio_type
            and all(getattr(m, name, _MISSING) == value for name, value in fields.items())
        ]

    def assert_fired(
        self, messagio_type: type[Messagio], count: int | None = None, **fields: Any
    ) -> list[Messagio]:
        """Assert such a messagio was fired (``count`` times, if given); return the matches."""
        matches = self.of_type(messagio_type, **fields)
        if not matches or (count is not None and len(matches) != count):
            wanted = f"{messagio_type.__name__}({_format(fields)})"
            times = f" {count} time(s)" if count is not None else ""
            raise AssertionError(
                f"Expected {wanted} to be fired{times}; found {len(matches)}. "
                f"Fired: {self._listing()}"
            )
        return matches

    def assert_not_fired(self, messagio_type: type[Messagio], **fields: Any) -> None:
        """Assert no such messagio was fired."""
        matches = self.of_type(messagio_type, **fields)
        if matches:
            raise AssertionError(
                f"Expected no {messagio_type.__name__}({_format(fields)}); found {len(matches)}."
            )

    def clear(self) -> None:
        self.messagios.clear()

    def _listing(self) -> str:
        return ", ".join(repr(m) for m in self.messagios) or "nothing"


_MISSING = object()


def _format(fields: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in fields.items())


class CapturingMessageCenter(AbstractMessageCenter):
    """Records fired messagios and runs no listener. Payloads must still pickle."""

    def __init__(self, fired: FiredMessagios) -> None:
        self.fired = fired

    def send(self, messagio: Messagio, sync: bool = False, **options: Any) -> DispatchReport:
        from messagio.conf import get_setting
        from messagio.payload import dumps

        if set(options) - {"raise_errors"} or (options and not sync):
            raise TypeError(f"Unknown fire() options: {', '.join(sorted(options))}")
        self._check_messagio(messagio)
        dumps(messagio, get_setting("MAX_PAYLOAD_BYTES"))  # the refusal a real fire would give
        self.fired.messagios.append(messagio)
        return DispatchReport(uuid.uuid4(), type(messagio).get_name(), sync=sync)


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
