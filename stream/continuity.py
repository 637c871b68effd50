"""Catch messages that Faust skipped: an agent's input must continue right after its state.

Each agent's state records the last offset it applied per partition, so the next message it
takes must be that offset + 1 (or a copy at or below it, which the offset guards skip). Around
rebalances faust-streaming 0.15.3 can hand an agent a later message instead (records fetched
before a seek and delivered after it; see :mod:`stream.faust_patches`), and counts the offsets
in between as done. The agent then seeks the partition back to the offset after its state
instead of processing the later message: nothing is skipped, even if the group's commit already
went past, and a restart with the state kept resumes at the right place as well.

A real gap (transaction markers, compaction) looks the same at first: after the seek the broker
returns the same later message again. :meth:`Continuity.check` takes it once it came first
``CONFIRM`` times in a row: a message queued before the seek and delivered after it, even one
below the first offending offset (Faust does not keep their order), is not taken for a gap (it
is what the two-worker drill lost three admissions to, when the first one past the seek was
taken). While a seek is pending, later messages are dropped; the seek fetches them again (the agent pins Faust's read offset at the
seek target, else Faust would drop the re-fetched messages: :func:`stream.faust_patches.rewind`).

>>> c = Continuity()
>>> c.check(0, offset=5, applied=4) is None   # next in line
True
>>> c.check(0, offset=9, applied=4)           # 5..8 skipped: seek back to 5
5
>>> c.check(0, offset=10, applied=4) == DROP  # queued before the seek: fetched again
True
>>> c.check(0, offset=7, applied=4)           # queued before it too, out of order: seek again
5
>>> c.check(0, offset=5, applied=4) is None   # the re-fetched message
True
>>> [c.check(1, offset=7, applied=2) for _ in range(CONFIRM)]  # a real gap, taken
[3, 3, None]
"""

from __future__ import annotations

DROP = -1  # check(): leave the message, a pending seek fetches it again
CONFIRM = 3  # a gap is taken when the same offset came first this many times in a row


class Continuity:
    """Per partition: is a message next in line after the state, or where to seek back to."""

    def __init__(self) -> None:
        # partition -> (sought offset, the message offset that caused it, times seen first)
        self._probes: dict[int, tuple[int, int, int]] = {}

    def check(self, partition: int, offset: int, applied: int) -> int | None:
        """None to process the message (or skip it as a copy), :data:`DROP`, or the offset to seek to."""
        expected = applied + 1
        if offset <= expected:
            self._probes.pop(partition, None)  # in line
            return None
        probe = self._probes.get(partition)
        if probe is not None and probe[0] == expected:
            if offset > probe[1]:
                return DROP
            # the same first message again, or a lower one (queued out of order, or the log's
            # new start after retention): seek again until one comes first CONFIRM times
            seen = probe[2] + 1 if offset == probe[1] else 1
            if seen >= CONFIRM:
                del self._probes[partition]
                return None
            self._probes[partition] = (expected, offset, seen)
            return expected
        self._probes[partition] = (expected, offset, 1)
        return expected
