"""Fault injection into a drill's worker subprocess (this folder is on its PYTHONPATH only then).

``WARDSTREAM_TEST_LOSE_FAUST_COMMITS=<topic>[,<topic>...]``: Faust's own commits of those
topics' partitions never reach the broker, while Faust records them as done. faust-streaming
0.15.3's ``Consumer._commit_offsets`` does that whenever its client's commit fails or leaves a
partition out (stream/faust_patches.py, 3.); here it happens to every commit, so a drill shows
that the worker's commit watch alone keeps the group's commits up with the agents' progress.
"""

import os
import sys

_LOST = {t for t in os.environ.get("WARDSTREAM_TEST_LOSE_FAUST_COMMITS", "").split(",") if t}

if _LOST:
    from faust.transport.consumer import Consumer

    _commit_offsets = Consumer._commit_offsets

    async def _losing_commit_offsets(self, offsets, start_new_transaction=True):
        lost = {tp: offset for tp, offset in offsets.items() if tp.topic in _LOST}
        self._committed_offset.update(lost)
        kept = {tp: offset for tp, offset in offsets.items() if tp not in lost}
        return await _commit_offsets(self, kept, start_new_transaction) if kept else False

    Consumer._commit_offsets = _losing_commit_offsets
    print(f"fault injection: Faust's commits of {sorted(_LOST)} do not reach the broker",
          file=sys.stderr, flush=True)
