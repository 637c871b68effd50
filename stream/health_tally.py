"""The ADT flow's side of model health: what a health check needs, counted where the events are.

The ADT flow (``stream/adt_flow.py``) calls :class:`HealthTally` at each discharge and label, over
its ``health`` table (a :class:`stream.staged.Staged` view, journaled like its other tables):

* ``h{partition}|{facility}|{YYYY-MM-DD}``: the ABSOLUTE aggregates of that partition's discharges
  of that facility on that day: ``n`` discharges, ``n_index`` index discharges, ``hist`` (score and
  feature histograms, ``domain.health.psi_edges``) and ``labels`` (subgroup figures of the day's
  index discharges whose label is known, ``domain.health.add_label``). A batch sends each record it
  changed on ``hospital.health-partials`` (:meth:`HealthTally.partials`); the monitor keeps the last
  one per key. Replace semantics: a record re-sent after a crash replaces the earlier one, so
  nothing counts twice and no offsets are needed.
* ``e{partition}|{facility}``: the error detector (``domain.health.ErrorDrift``) of the
  partition's model on that facility's labels; it warns on ``hospital.model-health`` directly.

Everything is a function of the partition's input in order: same input, same records.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import orjson

from contracts.events import dump
from stream.domain import health
from stream.domain.patient import LabelOutcome


def day_key(partition: int, facility_id: str, day: str) -> str:
    return f"h{partition}|{facility_id}|{day}"


def detector_key(partition: int, facility_id: str) -> str:
    return f"e{partition}|{facility_id}"


class HealthTally:
    """Counts into ``table`` (the ADT flow's staged ``health`` table) for the current partition."""

    def __init__(self, table: Any) -> None:
        self.table = table  # Staged: .partition is the partition of the message being processed
        # live error detectors, as the flow keeps its models: decoded once, written once a batch
        # (a detector is a pickled river object, too costly to encode at every label)
        self._detectors: dict[str, health.ErrorDrift] = {}
        self._changed: dict[str, int] = {}  # detector key -> its partition, written at stage()

    def _day(self, facility_id: str, at: datetime) -> tuple[str, dict[str, Any]]:
        key = day_key(self.table.partition, facility_id, at.astimezone(timezone.utc).date().isoformat())
        entry = self.table.get(key)
        if entry is None:
            entry = health.empty_day()
        elif key not in self.table.pending:  # the committed record: count into a copy (a
            entry = orjson.loads(orjson.dumps(entry))  # rolled-back batch must leave it as it was)
        return key, entry

    def discharge(self, facility_id: str, at: datetime, score: float, x: dict[str, float],
                  index: bool, weight: int = 1) -> None:
        """A discharge was scored (``weight`` -1: its discharge was cancelled): count it into
        (out of) its day's histograms."""
        key, entry = self._day(facility_id, at)
        entry["n"] += weight
        entry["n_index"] += weight * int(index)
        health.add_to_histograms(entry["hist"], score, x, weight)
        self.table[key] = entry

    def count_label(self, o: LabelOutcome, weight: int = 1) -> None:
        """Count a label on its discharge day (``weight`` -1: take a withdrawn one back out)."""
        p = o.pending
        key, entry = self._day(p.facility_id, p.discharged_at)
        health.add_label(entry["labels"], p.subgroups, readmitted=o.readmitted,
                         flagged=p.high_risk, score=p.score, weight=weight)
        self.table[key] = entry

    def label(self, o: LabelOutcome) -> list[tuple[str, bytes]]:
        """A label is known: count it on its discharge day; feed the error detector (which,
        like the model, does not unlearn a label withdrawn later).

        Returns the ``hospital.model-health`` messages (key, value) of a detected rise.
        """
        p = o.pending
        self.count_label(o)
        dkey = detector_key(self.table.partition, p.facility_id)
        detector = self._detectors.get(dkey)
        if detector is None:
            stored = self.table.get(dkey)
            detector = self._detectors[dkey] = (health.ErrorDrift.from_dict(stored) if stored
                                                else health.ErrorDrift.new(o.known_at))
        since = detector.since  # the update starts a new run when it fires
        fired = detector.update((p.score - float(o.readmitted)) ** 2, o.known_at)  # Brier error
        self._changed[dkey] = self.table.partition
        if fired is None:
            return []
        recent, earlier, n = fired
        warning = health.error_drift_check(p.facility_id, self.table.partition, since=since,
                                           at=o.known_at, recent=recent, earlier=earlier, n=n)
        return [(warning.check_id, dump(warning))]

    def stage(self) -> None:
        """Write the detectors the batch changed to the (staged) table, before its journal."""
        for dkey, partition in self._changed.items():
            self.table.partition = partition
            self.table[dkey] = self._detectors[dkey].to_dict()
        self._changed.clear()

    def forget(self) -> None:
        """Drop the live detectors (a rolled-back batch, a rebalance: the table is the truth)."""
        self._detectors.clear()
        self._changed.clear()

    def partials(self) -> list[tuple[str, str, bytes]]:
        """``(key, facility_id, value)`` of every day record the batch changed (sent to the
        partition of ``facility_id``; the key keeps compaction per record)."""
        out = []
        for key, (partition, value) in self.table.pending.items():
            if not key.startswith("h"):
                continue
            _, facility_id, day = key.split("|")
            out.append((f"{facility_id}|{partition}|{day}", facility_id, orjson.dumps(
                {"facility_id": facility_id, "partition": partition, "day": day, **value},
                option=orjson.OPT_SORT_KEYS)))
        return out


def parse_partial(raw: bytes) -> dict[str, Any]:
    """A ``hospital.health-partials`` value: facility_id, partition, day and the day record."""
    return orjson.loads(raw)
