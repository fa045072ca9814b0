"""Record ids: version 7 UUIDs that sort by the time they were made."""

import time
import uuid

from messagio.ids import time_ordered_uuid


def next_millisecond(after: int) -> int:
    while (now := time.time_ns() // 1_000_000) <= after:
        pass
    return now


def test_an_id_is_a_version_7_rfc_9562_uuid_carrying_its_time():
    before = time.time_ns() // 1_000_000
    made = time_ordered_uuid()
    after = time.time_ns() // 1_000_000
    assert made.version == 7
    assert made.variant == uuid.RFC_4122
    assert before <= made.int >> 80 <= after


def test_ids_made_in_a_later_millisecond_sort_after_earlier_ones():
    first = time_ordered_uuid()
    next_millisecond(first.int >> 80)
    second = time_ordered_uuid()
    assert first < second and first.bytes < second.bytes  # PostgreSQL compares the bytes


def test_ids_made_in_the_same_millisecond_differ():
    ids = {time_ordered_uuid() for _ in range(10_000)}
    assert len(ids) == 10_000
