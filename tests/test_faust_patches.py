"""Unit tests of the read-offset rewind in stream/faust_patches.py (the drills in test_faults.py
exercise it through the real broker). The drainer is Faust's ``Consumer._drain_messages`` rule:
a fetched message goes to the stream if its offset >= the read offset, which then becomes it."""

from __future__ import annotations

from faust.types import TP

from stream.faust_patches import _ReadOffsets, rewind, settle

tp = TP("hospital.adt", 0)


class _Consumer:
    def __init__(self) -> None:
        self._read_offset = _ReadOffsets()


def _drain(consumer: _Consumer, offsets: list[int]) -> list[int]:
    """What Faust's drainer hands to the stream, in order."""
    delivered = []
    for offset in offsets:
        read = consumer._read_offset[tp]
        if read is None or offset >= read:
            delivered.append(offset)
            consumer._read_offset[tp] = offset
    return delivered


def test_without_a_rewind_faust_drops_what_a_seek_back_fetches_again() -> None:
    c = _Consumer()
    assert _drain(c, [361, 362]) == [361, 362]
    assert _drain(c, [264, 265]) == []  # the seek back to 264 is answered with nothing


def _seek_wait(consumer: _Consumer, offset: int) -> None:
    """What faust's ``_seek_wait`` does to the read offset (in the consumer's thread)."""
    consumer._read_offset[tp] = offset


def test_a_rewind_lets_the_re_fetch_through_despite_records_fetched_before_it() -> None:
    c = _Consumer()
    _drain(c, [361])
    rewind(c, tp, 264)
    _seek_wait(c, 264)
    # records fetched before the seek are still delivered (the agent drops them), then the re-fetch
    assert _drain(c, [362, 363, 264, 265, 361, 362]) == [362, 363, 264, 265, 361, 362]
    settle(c, tp)  # the agent took 264
    assert not c._read_offset.rewound
    _drain(c, [363])
    assert _drain(c, [300]) == []  # back to Faust's rule


def test_without_the_pin_the_seek_alone_is_undone_by_records_fetched_before_it() -> None:
    c = _Consumer()
    _drain(c, [361])
    _seek_wait(c, 264)
    assert _drain(c, [362, 264]) == [362]  # the re-fetched 264 is dropped: the stall


def test_a_real_gap_is_settled_by_the_agent_and_a_rebalance_clears_a_rewind() -> None:
    c = _Consumer()
    rewind(c, tp, 10)
    _drain(c, [12, 13])  # 10 and 11 do not exist (transaction markers)
    assert c._read_offset[tp] == 10
    settle(c, tp)  # the agent took 12: a real gap
    _drain(c, [14])
    assert c._read_offset[tp] == 14
    rewind(c, tp, 5)
    c._read_offset.update({tp: 20})  # perform_seek after a rebalance
    assert not c._read_offset.rewound and c._read_offset[tp] == 20
    rewind(c, tp, 5)
    c._read_offset.pop(tp, None)  # revoked
    assert not c._read_offset.rewound and c._read_offset[tp] is None
