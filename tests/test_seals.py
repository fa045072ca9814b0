"""Seals on task messages: what a worker accepts as messagio's own."""

import pytest
from django.test import override_settings
from kombu.utils.json import dumps, loads

from messagio.dispatch import compacted
from messagio.seals import check, is_sealed, seal_of, sealed

ENVELOPE = {
    "v": 1,
    "event": "0190c2a0-0000-7000-8000-000000000001",
    "type": "shop.events.OrderPlaced",
    "payload": "bWdvMQ==",
    "priority": 5,
    "queue": None,
    "record": True,
    "listeners": [
        {"delivery": "d1", "id": "shop.listeners.mail", "import_path": "shop.listeners:mail",
         "autoretry_for": [], "max_retries": 0, "retry_delay": 180.0, "time_limit": 600.0,
         "attempt": 1},
    ],
}  # fmt: skip


def test_a_sealed_envelope_checks_out_after_a_trip_through_json():
    assert check(loads(dumps(sealed(ENVELOPE)))) == "sealed"


def test_sealing_leaves_the_envelope_it_is_given_as_it_was():
    sealed(ENVELOPE)

    assert "seal" not in ENVELOPE


@pytest.mark.parametrize(
    "change",
    [
        {"listeners": [dict(ENVELOPE["listeners"][0], import_path="os:system")]},
        {"event": "0190c2a0-0000-7000-8000-000000000002"},
        {"record": False},
        {"replay": 7},
    ],
)
def test_an_envelope_whose_frame_changed_after_sealing_is_forged(change):
    assert check({**sealed(ENVELOPE), **change}) == "forged"


def test_an_envelope_whose_payload_alone_changed_is_told_apart():
    assert check({**sealed(ENVELOPE), "payload": "b3RoZXI="}) == "payload"


@pytest.mark.parametrize("seal", [None, "", "abc", "a:b:c", 42])
def test_an_envelope_without_a_proper_seal_is_forged(seal):
    assert check({**ENVELOPE, "seal": seal}) == "forged"


def test_a_seal_made_with_a_former_key_is_accepted_while_that_key_is_a_fallback(settings):
    with override_settings(SECRET_KEY="old-key-" + "x" * 50):
        old = sealed(ENVELOPE)

    with override_settings(SECRET_KEY="new-key-" + "y" * 50):
        assert check(old) == "forged"
    with override_settings(SECRET_KEY="new-key-" + "y" * 50, SECRET_KEY_FALLBACKS=[
        "old-key-" + "x" * 50
    ]):  # fmt: skip
        assert check(old) == "sealed"


def test_task_arguments_are_sealed_as_a_whole():
    arguments = [12, {"pk__in": ["a", "b"]}]
    seal = seal_of(arguments)

    assert is_sealed(loads(dumps(arguments)), seal)
    assert not is_sealed([12, {"pk__in": ["a", "b", "c"]}], seal)
    assert not is_sealed(arguments, None)


@pytest.mark.parametrize("message", [None, "text", ["a", "list"], 42])
def test_a_message_that_is_not_an_envelope_is_forged(message):
    assert check(message) == "forged"


def test_only_a_direct_call_goes_unsealed_never_what_a_message_says():
    from celery.app.task import Context

    from messagio.tasks import _needs_a_seal

    # A message's body can set any request field but called_directly, which Celery's trace
    # sets after it: apply() and eager runs are checked as a worker's are.
    assert _needs_a_seal(Context(id=None, called_directly=False, is_eager=False))
    assert _needs_a_seal(Context(id="t", called_directly=False, is_eager=True))
    assert not _needs_a_seal(Context())  # a direct call


def test_a_compacted_envelope_whose_shared_specs_changed_after_sealing_is_forged():
    compact = sealed(compacted(ENVELOPE))

    assert check(loads(dumps(compact))) == "sealed"
    assert check({**compact, "shared": {**compact["shared"], "max_retries": 99}}) == "forged"
