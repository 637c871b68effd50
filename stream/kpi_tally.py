"""The ADT flow's side of the KPIs: absolute day partials per (ADT partition, dimension, day).

Each ADT event yields KPI contributions (``domain.kpis.for_admission`` and the like); the flow
adds them, in its own journaled ``kpi`` table, to the ABSOLUTE day bucket of the message's ADT
partition: ``k{partition}|{dimension}|{dimension_id}|{YYYY-MM-DD}`` = ``{"f": facility_id,
"b": DayBucket}``. After a batch, every bucket it changed goes to ``hospital.kpi-partials``
(compacted), key ``{dimension}|{dimension_id}|{day}|{partition}`` (one record per key, as
compaction needs), sent to the partition a key of ``{dimension}|{dimension_id}`` gets (murmur2),
so one dimension's records all reach one KPI combiner (``stream/kpi_combiner.py``).

Replace semantics: whoever combines them keeps the latest record per key and sums the ADT
partitions. A record sent again (a crash, a re-processed batch) replaces the one kept, so
nothing counts twice and no source marks or offsets are needed; a correction of a past event
only changes the records of the days it touches. Patients live on one ADT partition, so the
per-partition sets of distinct discharged patients add up across partitions.

Provider capacity (``hospital.reference``) travels the same topic as one more record per
provider (:func:`capacity_partial`): its latest value replaces the one kept, like any partial.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from typing import Any

import orjson

from stream.domain import kpis

CAPACITY_DAY = "capacity"  # the "day" of a provider's capacity record


def table_key(partition: int, c: kpis.Contribution) -> str:
    return f"k{partition}|{c.dimension}|{c.dimension_id}|{c.day.isoformat()}"


def route(dimension: str, dimension_id: str) -> str:
    """The key whose partition every record of a dimension goes to."""
    return f"{dimension}|{dimension_id}"


def record_key(dimension: str, dimension_id: str, day: str, partition: int | None) -> str:
    """The compaction key of one record (``partition`` None: a capacity record)."""
    return f"{dimension}|{dimension_id}|{day}" + ("" if partition is None else f"|{partition}")


@dataclass
class _Open:
    """A bucket the batch is adding to (kept as an object until :meth:`KpiTally.stage`)."""

    partition: int
    facility_id: str
    bucket: kpis.DayBucket
    changed: set[str]
    new: bool


class KpiTally:
    """Adds contributions into ``table`` (the ADT flow's staged ``kpi`` table) for the current
    partition (``table.partition``, set by the flow).

    A batch adds to live bucket objects; :meth:`stage` writes each one it changed to the table
    once (the flow calls it before its journal and its partials are taken).
    """

    def __init__(self, table: Any) -> None:
        self.table = table
        self._open: dict[str, _Open] = {}

    def add(self, contributions: Iterable[kpis.Contribution]) -> None:
        """Add to the buckets; each bucket the batch changed remembers which inputs (``c``) and
        whether the batch created it (``n``), which its record carries (:meth:`partials`)."""
        partition = self.table.partition
        for c in contributions:
            key = table_key(partition, c)
            o = self._open.get(key)
            if o is None:
                entry = self.table.get(key)
                if entry is None:
                    o = _Open(partition, c.facility_id, kpis.DayBucket(), set(), True)
                else:  # a copy: a rolled-back batch must leave the committed record as it was
                    staged = key in self.table.pending
                    o = _Open(partition, entry["f"], kpis.DayBucket.from_dict(entry["b"]),
                              set(entry["c"]) if staged else set(), staged and entry["n"])
                self._open[key] = o
            o.changed |= o.bucket.add(c)

    def stage(self) -> None:
        """Write the buckets the batch changed to the (staged) table."""
        for key, o in self._open.items():
            if o.changed:
                self.table.partition = o.partition
                self.table[key] = {"f": o.facility_id, "b": o.bucket.to_dict(), "c": sorted(o.changed),
                                   "n": o.new}
        self._open.clear()

    def forget(self) -> None:
        """Drop the batch's buckets (it is rolled back)."""
        self._open.clear()

    def partials(self) -> list[tuple[str, str, bytes]]:
        """``(key, route, value)`` of every bucket the batch changed: the bucket, the inputs the
        batch changed (``changed``: a KPI field or ``patients``) and whether the batch created it
        (``new``). A combiner that gets records again after a crash knows from them what their
        windows need, whatever it holds already."""
        self.stage()
        out = []
        for key, (partition, entry) in self.table.pending.items():
            if not key.startswith("k") or entry is None:
                continue
            _, dimension, dimension_id, day = key.split("|")
            out.append((record_key(dimension, dimension_id, day, partition), route(dimension, dimension_id),
                        _json({"dimension": dimension, "dimension_id": dimension_id, "facility_id": entry["f"],
                               "day": day, "partition": partition, **entry["b"],
                               "changed": entry["c"], "new": entry["n"]})))
        return out


def capacity_partial(provider_id: str, facility_id: str, capacity: float | None) -> tuple[str, str, bytes]:
    """``(key, route, value)`` of a provider's capacity record."""
    return (record_key("provider", provider_id, CAPACITY_DAY, None), route("provider", provider_id),
            _json({"dimension": "provider", "dimension_id": provider_id, "facility_id": facility_id,
                   "capacity": capacity}))


@dataclass(frozen=True)
class Partial:
    """A decoded ``hospital.kpi-partials`` record: a day bucket of one ADT partition, or (``day``
    None) a provider's capacity."""

    dimension: str
    dimension_id: str
    facility_id: str
    day: date | None
    partition: int | None
    bucket: kpis.DayBucket | None
    capacity: float | None = None
    changed: frozenset[str] = frozenset()  # the inputs the record's batch changed
    new: bool = False  # the record's batch created the bucket

    @classmethod
    def parse(cls, raw: bytes) -> "Partial":
        d = orjson.loads(raw)
        if "capacity" in d:
            return cls(d["dimension"], d["dimension_id"], d["facility_id"], None, None, None,
                       None if d["capacity"] is None else float(d["capacity"]))
        unknown = set(d["micro"]) - set(kpis.FIELDS)
        if unknown:
            raise ValueError(f"unknown KPI fields: {sorted(unknown)}")
        return cls(d["dimension"], d["dimension_id"], d["facility_id"], date.fromisoformat(d["day"]),
                   int(d["partition"]), kpis.DayBucket.from_dict(d), None,
                   frozenset(d.get("changed", ())), bool(d.get("new")))


def _json(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
