"""Catch messages that Faust skipped: an agent's input must continue right after its state.

Each agent's state records the last offset it applied per partition, so the next message it
takes must be that offset + 1 (or a copy at or below it, which the offset guards skip). Around
rebalances faust-streaming 0.15.3 can hand an agent a later message instead (records fetched
before a seek and delivered after it; see :mod:`stream.faust_patches`), and counts the offsets
in between as done. The agent then seeks the partition back to the offset after its state
instead of processing the later message: nothing is skipped, even if the group's commit already
went past, and a restart with the state kept resumes at the right place as well.

A real gap (transaction markers, compaction) looks the same at first: after the seek the broker
returns a message past the expected offset again, and :meth:`Continuity.check` takes it. While a
seek is pending, later messages already queued (fetched before it) are dropped; the seek
fetches them again (the agent rewinds Faust's read offset with the seek, else Faust would drop
the re-fetched messages: :func:`stream.faust_patches.rewind`).

>>> c = Continuity()
>>> c.check(0, offset=5, applied=4) is None   # next in line
True
>>> c.check(0, offset=9, applied=4)           # 5..8 skipped: seek back to 5
5
>>> c.check(0, offset=10, applied=4) == DROP  # queued before the seek: fetched again
True
>>> c.check(0, offset=5, applied=4) is None   # the re-fetched message
True
>>> c.check(1, offset=7, applied=2), c.check(1, offset=7, applied=2)  # a real gap, taken
(3, None)
"""

from __future__ import annotations

DROP = -1  # check(): leave the message, a pending seek fetches it again


class Continuity:
    """Per partition: is a message next in line after the state, or where to seek back to."""

    def __init__(self) -> None:
        self._probes: dict[int, tuple[int, int]] = {}  # partition -> (sought offset, message offset)

    def check(self, partition: int, offset: int, applied: int) -> int | None:
        """None to process the message (or skip it as a copy), :data:`DROP`, or the offset to seek to."""
        expected = applied + 1
        probe = self._probes.get(partition)
        if offset <= expected or (probe is not None and probe[0] == expected and offset <= probe[1]):
            self._probes.pop(partition, None)  # in line, or the first message after the seek
            return None
        if probe is not None and probe[0] == expected:
            return DROP
        self._probes[partition] = (expected, offset)
        return expected
