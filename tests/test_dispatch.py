"""What a task carries about a listener, and how a worker decides a retry."""

from kombu.utils.json import dumps, loads

from messagio.dispatch import compacted, expanded, should_retry
from messagio.seals import sealed


def not_an_exception_class() -> None:
    """What an autoretry_for path may name after a rename (a function now)."""


def spec(*autoretry_for: str) -> dict:
    return {"attempt": 1, "max_retries": 3, "autoretry_for": list(autoretry_for)}


def test_an_autoretry_for_path_that_names_no_exception_class_now_is_ignored():
    # isinstance() would raise TypeError after the listener ran, before its outcome was
    # recorded: the delivery would stay running.
    here = "tests.test_dispatch:not_an_exception_class"

    assert should_retry(spec(here), RuntimeError("x")) is False
    assert should_retry(spec(here, "builtins:RuntimeError"), RuntimeError("x")) is True


def test_a_retry_is_due_until_max_retries_retries_were_made():
    retryable = spec("builtins:ConnectionError")

    assert should_retry(retryable, ConnectionError()) is True
    assert should_retry({**retryable, "attempt": 4}, ConnectionError()) is False
    assert should_retry(retryable, ValueError()) is False


def listener(number: int, **own) -> dict:
    return {
        "delivery": f"0190c2a0-0000-7000-8000-{number:012d}",
        "position": number,
        "id": f"shop.listeners.listener_{number}",
        "import_path": f"shop.listeners:listener_{number}",
        "autoretry_for": [],
        "max_retries": 0,
        "retry_delay": 180.0,
        "time_limit": 600.0,
        "attempt": 1,
        **own,
    }


def envelope(*listeners: dict) -> dict:
    return {"v": 1, "event": "e", "type": "shop.events.OrderPlaced", "listeners": list(listeners)}


def sent(envelope: dict) -> dict:
    """What a worker receives: the compacted envelope after a trip through JSON."""
    return loads(dumps(compacted(envelope)))


def test_a_compacted_envelope_expands_to_the_listeners_it_was_built_with():
    group = envelope(
        listener(0),
        listener(1, autoretry_for=["builtins:ConnectionError"], max_retries=3, retry_delay=5.0),
        listener(2, id="named-by-its-subscription"),
        listener(3, id="<lambda>", import_path=None),
        listener(4, time_limit=600, attempt=2),  # an int where the first has a float
        listener(5, time_limit=None),
    )

    received = expanded(sent(group))

    assert received["listeners"] == group["listeners"]
    assert [type(spec["time_limit"]) for spec in received["listeners"]][:5] == [float] * 4 + [int]
    assert "shared" not in received


def test_listeners_of_the_projects_defaults_travel_as_their_delivery_position_and_path():
    group = envelope(*(listener(n) for n in range(16)))

    compact = sent(group)

    assert [set(spec) for spec in compact["listeners"]] == [
        {"delivery", "position", "import_path"}
    ] * 16
    # Under the 4 kB RabbitMQ keeps in a queue's index, seal and all; spelled out, over.
    assert len(dumps(sealed(compact))) < 4096 < len(dumps(sealed(group)))


def test_an_envelope_spelled_out_in_full_is_read_as_it_is():
    group = envelope(listener(0), listener(1))

    assert expanded(loads(dumps(group))) == group
