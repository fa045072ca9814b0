"""What a task carries about a listener, and how a worker decides a retry."""

from messagio.dispatch import should_retry


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
