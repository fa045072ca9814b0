"""Payloads: pickled, signed, refused at fire time when they cannot travel."""

import pickle
import threading
from dataclasses import dataclass

import pytest
from django.test import override_settings

from messagio import Messagio, PayloadError, PayloadSignatureError
from messagio.payload import MAGIC, decode, dumps, encode, unsign


@dataclass
class Note(Messagio):
    text: str
    extra: object = None


class Explode:
    """Unpickling this would write a file: a stand-in for hostile bytes."""

    def __reduce__(self):
        return (open, ("/tmp/messagio-pwned", "w"))


def test_encode_then_decode_gives_an_equal_messagio():
    assert decode(encode(Note("hello", {"a": [1, 2]}))) == Note("hello", {"a": [1, 2]})


def test_a_tampered_payload_is_refused_before_unpickling():
    blob = bytearray(encode(Note("hello")))
    blob[-3] ^= 0xFF
    with pytest.raises(PayloadSignatureError, match="payload signature mismatch"):
        decode(bytes(blob))


def test_an_unsigned_pickle_is_never_unpickled(tmp_path):
    hostile = pickle.dumps(Explode())
    with pytest.raises(PayloadSignatureError, match="payload signature mismatch"):
        decode(hostile)
    with pytest.raises(PayloadSignatureError, match="payload signature mismatch"):
        decode(MAGIC + b"\0" * 32 + hostile)


def test_a_payload_signed_with_another_key_is_refused():
    blob = encode(Note("hello"))
    with override_settings(SECRET_KEY="another-key"), pytest.raises(PayloadSignatureError):
        unsign(blob)


def test_a_payload_signed_with_a_fallback_key_still_verifies():
    with override_settings(SECRET_KEY="old-key"):
        blob = encode(Note("hello"))
    with override_settings(SECRET_KEY="new-key", SECRET_KEY_FALLBACKS=["old-key"]):
        assert decode(blob) == Note("hello")


def test_the_signing_key_setting_overrides_secret_key():
    with override_settings(MESSAGIO={"SIGNING_KEY": "messagio-only"}):
        blob = encode(Note("hello"))
        assert decode(blob) == Note("hello")
    with pytest.raises(PayloadSignatureError):
        unsign(blob)


@pytest.mark.parametrize(
    ("value", "kind"),
    [(lambda: 1, "function"), (threading.Lock(), "lock")],
)
def test_an_unpicklable_field_is_named_with_its_class(value, kind):
    with pytest.raises(PayloadError) as error:
        dumps(Note("hello", value))
    assert "tests.test_payload.Note" in str(error.value)
    assert "'extra'" in str(error.value)
    assert kind in str(error.value)


def test_an_open_file_is_refused_naming_the_field(tmp_path):
    with open(tmp_path / "f.txt", "w") as handle, pytest.raises(PayloadError, match="'extra'"):
        dumps(Note("hello", handle))


def test_a_payload_over_the_limit_is_refused_with_the_setting_named():
    with pytest.raises(PayloadError, match=r"MAX_PAYLOAD_BYTES'\] = 100"):
        dumps(Note("x" * 1000), max_bytes=100)


def test_a_former_signing_key_still_verifies_during_rotation():
    with override_settings(MESSAGIO={"SIGNING_KEY": "old"}):
        blob = encode(Note("hello"))
    with override_settings(MESSAGIO={"SIGNING_KEY": "new", "SIGNING_KEY_FALLBACKS": ["old"]}):
        assert decode(blob) == Note("hello")


def test_a_former_signing_key_still_verifies_after_going_back_to_the_secret_key():
    with override_settings(MESSAGIO={"SIGNING_KEY": "old"}):
        blob = encode(Note("hello"))
    with override_settings(MESSAGIO={"SIGNING_KEY_FALLBACKS": ["old"]}):
        assert decode(blob) == Note("hello")
    with override_settings(MESSAGIO={}), pytest.raises(PayloadSignatureError):
        decode(blob)
