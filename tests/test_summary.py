"""The summary: a JSON-safe, size-capped, field-by-field view of a messagio, for the admin."""

import datetime
import decimal
import json
import tracemalloc
import uuid
from dataclasses import dataclass, field

import pytest

from messagio import Messagio
from messagio.summary import FIELD_LIMIT, TOTAL_LIMIT, describe, summarize
from tests.testapp.models import Call


@dataclass
class Ordered(Messagio):
    zebra: str
    apple: int
    mango: list = field(default_factory=list)


class Plain(Messagio):
    def __init__(self, sku: str, left: int):
        self.sku = sku
        self.left = left


class Bare(Messagio):
    def __repr__(self) -> str:
        return "<Bare messagio>"


class Many(Messagio):
    """A messagio with many long fields, far over the total limit."""

    def __init__(self, count: int, size: int):
        for i in range(count):
            setattr(self, f"field_{i:02d}", "x" * size)


def test_dataclass_fields_are_summarized_in_declaration_order():
    summary = summarize(Ordered(zebra="z", apple=1, mango=["m"]))

    assert list(summary) == ["zebra", "apple", "mango"]
    assert summary == {"zebra": "z", "apple": 1, "mango": "['m']"}


def test_a_plain_class_is_summarized_from_its_instance_dict():
    assert summarize(Plain("SKU-1", 3)) == {"sku": "SKU-1", "left": 3}


def test_a_class_without_fields_is_summarized_as_its_repr():
    assert summarize(Bare()) == {"repr": "<Bare messagio>"}


@pytest.mark.django_db
def test_a_model_instance_is_shown_as_its_label_pk_and_str():
    call = Call.objects.create(token="t-1", listener="first")

    assert describe(call) == f'testapp.Call(pk={call.pk}) "first (t-1)"'


@pytest.mark.django_db
def test_a_model_instance_field_is_shown_by_label_in_the_summary():
    call = Call.objects.create(token="t-1", listener="first")

    @dataclass
    class WithCall(Messagio):
        call: Call

    assert summarize(WithCall(call)) == {"call": f'testapp.Call(pk={call.pk}) "first (t-1)"'}


@pytest.mark.django_db
def test_a_model_whose_str_is_broken_does_not_raise(monkeypatch):
    call = Call.objects.create(token="t-2", listener="broken")

    def broken_str(self):
        raise RuntimeError("__str__ is broken")

    # A bug in the user's model (a proxy model with a broken __str__ would need a migration).
    monkeypatch.setattr(Call, "__str__", broken_str)

    assert describe(call) == f'testapp.Call(pk={call.pk}) "?"'


def test_an_unsaved_model_instance_shows_pk_none():
    assert describe(Call(token="t", listener="l")) == 'testapp.Call(pk=None) "l (t)"'


def test_a_long_model_str_is_capped():
    text = describe(Call(token="t" * 300, listener="l"))

    assert text.startswith('testapp.Call(pk=None) "l (ttt')
    assert text.endswith('…"')
    assert len(text) == len('testapp.Call(pk=None) ""') + 120


def test_decimal_date_datetime_time_and_uuid_are_shown_as_strings():
    identifier = uuid.UUID("12345678-1234-5678-1234-567812345678")
    moment = datetime.datetime(2024, 5, 6, 7, 8, 9, tzinfo=datetime.UTC)

    assert describe(decimal.Decimal("19.90")) == "19.90"
    assert describe(datetime.date(2024, 5, 6)) == "2024-05-06"
    assert describe(moment) == "2024-05-06 07:08:09+00:00"
    assert describe(datetime.time(7, 8)) == "07:08:00"
    assert describe(identifier) == "12345678-1234-5678-1234-567812345678"


def test_json_scalars_are_kept_as_they_are():
    assert describe(None) is None
    assert describe(True) is True
    assert describe(42) == 42
    assert describe(1.5) == 1.5


def test_other_values_are_shown_as_their_repr():
    assert describe({"a": [1, 2]}) == "{'a': [1, 2]}"
    assert describe(b"\x00raw") == "b'\\x00raw'"


def test_a_value_whose_repr_raises_is_shown_by_its_type_name():
    class Hostile:
        def __repr__(self) -> str:
            raise RuntimeError("no repr")

    assert describe(Hostile()) == "<Hostile>"


def test_a_long_string_is_capped_to_the_field_limit_with_an_ellipsis():
    text = describe("a" * (FIELD_LIMIT + 100))

    assert len(text) == FIELD_LIMIT
    assert text == "a" * (FIELD_LIMIT - 1) + "…"


def test_a_string_exactly_at_the_field_limit_is_kept_whole():
    assert describe("b" * FIELD_LIMIT) == "b" * FIELD_LIMIT


def test_a_long_repr_is_capped_to_the_field_limit():
    text = describe(list(range(1000)))

    assert len(text) <= FIELD_LIMIT
    assert text.startswith("[0, 1, 2, ") and text.endswith("...]")


def test_a_long_object_repr_is_capped_to_the_field_limit():
    class Wordy:
        def __repr__(self) -> str:
            return "w" * 10_000

    text = describe(Wordy())

    assert len(text) == FIELD_LIMIT
    assert text.endswith("…")


def test_a_container_of_huge_strings_is_not_rendered_whole():
    # 1,000 strings of 100,000 characters: a full repr is 100 MB before its cut.
    values = ["x" * 100_000] * 1_000
    tracemalloc.start()
    try:
        text = describe(values)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert len(text) <= FIELD_LIMIT
    assert text.startswith("['xxx")
    assert peak < 10_000_000


def test_a_model_instance_inside_a_container_is_shown_by_label_and_pk_without_its_str():
    class Meta:
        label = "shop.Order"

    class Order:
        _meta = Meta()
        pk = 7

        def __str__(self) -> str:
            raise AssertionError("would query the database")

    assert describe([Order()]) == "[shop.Order(pk=7)]"


def test_a_value_that_cannot_be_shown_leaves_the_rest_of_the_summary():
    class Strange:
        def __getattr__(self, name):
            raise KeyError(name)  # not an AttributeError: getattr's default does not catch it

    @dataclass
    class Odd(Messagio):
        strange: object
        huge: int
        text: str

    summary = summarize(Odd(Strange(), 7**6000, "a\x00b\ud800"))

    assert summary["strange"] == "<Strange>"
    assert summary["huge"] == "<int of 16845 bits>"
    assert summary["text"] == "a\\x00b\\ud800"
    json.dumps(summary).encode("utf-8")  # storable as jsonb: no NUL, no lone surrogate


def test_the_total_size_is_capped_with_a_marker_of_the_fields_not_shown():
    count = 40
    summary = summarize(Many(count=count, size=FIELD_LIMIT))

    shown = [name for name in summary if name != "…"]
    assert 0 < len(shown) < count
    assert shown == [f"field_{i:02d}" for i in range(len(shown))]
    assert summary["…"] == f"{count - len(shown)} more field(s) not shown"
    assert sum(len(name) + len(value) for name, value in summary.items() if name != "…") <= (
        TOTAL_LIMIT
    )


def test_a_summary_under_the_total_limit_has_no_marker():
    summary = summarize(Many(count=3, size=10))

    assert "…" not in summary
    assert len(summary) == 3


def test_a_hostile_script_string_is_kept_as_plain_text():
    # Escaping is the admin's job when it renders; the summary stores the text as it was.
    summary = summarize(Plain("<script>alert('x')</script>", 0))

    assert summary["sku"] == "<script>alert('x')</script>"


def test_a_summary_serializes_to_json():
    summary = summarize(Ordered(zebra="<b>", apple=2, mango=[decimal.Decimal("1.5")]))

    assert json.loads(json.dumps(summary)) == summary


def test_a_nan_or_infinite_float_is_summarized_as_valid_json():
    @dataclass
    class Reading(Messagio):
        value: float
        limit: float

    summary = summarize(Reading(value=float("nan"), limit=float("inf")))

    json.dumps(summary, allow_nan=False)


def test_a_model_class_is_not_shown_as_a_model_instance():
    assert "pk=" not in describe(Call)


def test_bytes_subclasses_and_nested_dataclasses_are_rendered_bounded_too():
    import collections

    @dataclass
    class Inner:
        note: str

    Pair = collections.namedtuple("Pair", "left right")
    tracemalloc.start()
    try:
        shown = [
            describe(b"x" * 20_000_000),
            describe(collections.OrderedDict(a="y" * 20_000_000)),
            describe(Inner("z" * 20_000_000)),
            describe(Pair(1, "w" * 20_000_000)),
        ]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert all(len(text) <= FIELD_LIMIT for text in shown)
    assert shown[0].startswith("b'xxx") and shown[1].startswith("OrderedDict({'a': 'yyy")
    assert shown[2].startswith("Inner(note='zzz") and shown[3].startswith("Pair((1, 'www")
    assert peak < 50_000_000  # not one whole repr of 20 MB (40 MB with its copy)
