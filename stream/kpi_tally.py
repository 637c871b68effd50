"""The ADT flow's side of the KPIs: absolute day partials per (ADT partition, dimension, day).

Each ADT event yields KPI contributions (``domain.kpis.for_admission`` and the like); the flow
adds them, in its own journaled ``kpi`` table, to the ABSOLUTE day bucket of the message's ADT
partition and the contribution's dimension. The table holds a day's buckets of a partition in
:data:`SHARDS` entries, ``k{partition}|{YYYY-MM-DD}|{shard}`` = ``{"i": {"{dimension}|{id}":
{"f": facility_id, "b": DayBucket}}, "c": {item: inputs this batch changed}, "n": [items this
batch created]}`` (the shard: a CRC-32 of the item): a backlog's batch changes hundreds of
buckets on a day or two, and a few table writes cost far less than one changelog message per
bucket; an entry stays small (50 items for 10 hospitals, 500 for 100) as the day goes on.
After a batch, every bucket it changed is one record for
``hospital.kpi-partials``, sent to the partition a key of ``{dimension}|{dimension_id}`` gets
(murmur2), so one dimension's records all reach one KPI combiner (``stream/kpi_combiner.py``).
The records of a batch bound for one partition travel as one message, a JSON array
(:func:`bundles`): a backlog makes 1-2 records per ADT event, and one Kafka message each cost
more than the rest of the KPI path.

Replace semantics: whoever combines them keeps the latest record per (dimension, dimension_id,
day, ADT partition) and sums the ADT partitions. A record sent again (a crash, a re-processed
batch) replaces the one kept, so nothing counts twice and no source marks or offsets are
needed; a correction of a past event only changes the records of the days it touches. Patients
live on one ADT partition, so the per-partition sets of distinct discharged patients add up
across partitions. A partition's messages are read in order, so the latest record is the last.

Provider capacity (``hospital.reference``) travels the same topic as one more record per
provider (:func:`capacity_partial`): its latest value replaces the one kept, like any partial.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import orjson

from stream.domain import kpis

CAPACITY_DAY = "capacity"  # the "day" of a provider's capacity record
BUNDLE_BYTES = 512 * 1024  # a bundle's size limit, well under Kafka's 1 MB message limit


SHARDS = 8  # table entries per (ADT partition, day)
CACHED_ENTRIES = 4096  # decoded entries kept (~4 partitions x 8 shards x 128 days) before pruning
CACHED_DAYS = timedelta(days=40)  # what pruning keeps behind the latest day


def item_key(dimension: str, dimension_id: str) -> str:
    return f"{dimension}|{dimension_id}"


def shard(item: str) -> int:
    """The shard of ``item`` (``{dimension}|{id}``) within a day's table entries: a CRC-32, the
    same in every process (Python's ``hash`` of a str is not).

    >>> shard("facility|F01")
    7
    """
    return zlib.crc32(item.encode()) % SHARDS


def table_key(partition: int, day: date, item: str) -> str:
    """The ``kpi`` table entry holding ``item``'s bucket of ``day`` on ``partition``.

    >>> table_key(2, date(2025, 1, 31), "facility|F01")
    'k2|2025-01-31|7'
    """
    return f"k{partition}|{day.isoformat()}|{shard(item)}"


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

    A batch adds to live bucket objects; :meth:`stage` writes each table entry it changed once
    (the flow calls it before its journal and its partials are taken). An entry's ``c`` and
    ``n`` describe the batch that wrote it: the first write of an entry in a batch starts them
    empty, so the batch's records carry only what the batch did.
    """

    def __init__(self, table: Any) -> None:
        self.table = table
        self._open: dict[tuple[str, str], _Open] = {}  # (table key, item) -> bucket
        # entries as decoded or staged (a Faust table decodes at every read; a batch's labels
        # touch a month of days), kept from batch to batch: the tally is the table's one writer
        self._entries: dict[str, dict[str, Any] | None] = {}

    def add(self, contributions: Iterable[kpis.Contribution]) -> None:
        """Add to the buckets; each bucket the batch changed remembers which inputs (``c``) and
        whether the batch created it (``n``), which its record carries (:meth:`partials`)."""
        for c in contributions:
            o = self._bucket(c)
            o.changed |= o.bucket.add(c)

    def revert(self, contributions: Iterable[kpis.Contribution]) -> None:
        """Take contributions added before back out (a cancellation withdraws their event)."""
        for c in contributions:
            o = self._bucket(c)
            o.changed |= o.bucket.revert(c)

    def _bucket(self, c: kpis.Contribution) -> _Open:
        """The live bucket of ``c``'s dimension and day on the current partition."""
        partition = self.table.partition
        item = item_key(c.dimension, c.dimension_id)
        key = table_key(partition, c.day, item)
        o = self._open.get((key, item))
        if o is None:
            entry = self._entry(key)
            stored = entry["i"].get(item) if entry else None
            if stored is None:
                o = _Open(partition, c.facility_id, kpis.DayBucket(), set(), True)
            else:  # a copy: a rolled-back batch must leave the committed entry as it was
                staged = key in self.table.pending
                o = _Open(partition, stored["f"], kpis.DayBucket.from_dict(stored["b"]),
                          set(entry["c"].get(item, ())) if staged else set(),
                          staged and item in entry["n"])
            self._open[(key, item)] = o
        return o

    def _entry(self, key: str) -> dict[str, Any] | None:
        if key not in self._entries:
            self._entries[key] = self.table.get(key)
        return self._entries[key]

    def stage(self) -> None:
        """Write the entries whose buckets the batch changed to the (staged) table."""
        touched: dict[str, dict[str, _Open]] = {}
        for (key, item), o in self._open.items():
            if o.changed:
                touched.setdefault(key, {})[item] = o
        self._open.clear()
        for key, items in touched.items():
            entry = self._entry(key) or {"i": {}, "c": {}, "n": []}
            staged = key in self.table.pending
            changed = dict(entry["c"]) if staged else {}
            new = set(entry["n"]) if staged else set()
            stored = dict(entry["i"])
            for item, o in items.items():
                stored[item] = {"f": o.facility_id, "b": o.bucket.to_dict()}
                changed[item] = sorted(o.changed)
                new.discard(item)
                if o.new:
                    new.add(item)
            self.table.partition = next(iter(items.values())).partition
            self.table[key] = self._entries[key] = {"i": stored, "c": changed, "n": sorted(new)}
        if len(self._entries) > CACHED_ENTRIES:
            self._prune()

    def _prune(self) -> None:
        """Drop the cached entries of days far behind the latest (labels reach 30 days back; an
        older day is read from the table again)."""
        latest = max(key.split("|")[1] for key in self._entries)
        horizon = (date.fromisoformat(latest) - CACHED_DAYS).isoformat()
        for key in [key for key in self._entries if key.split("|")[1] < horizon]:
            del self._entries[key]

    def forget(self) -> None:
        """Drop the batch's buckets (it is rolled back) and the cached entries."""
        self._open.clear()
        self._entries.clear()

    def drop_cache(self) -> None:
        """Drop the cached entries (the partitions moved: the table is the truth)."""
        self._entries.clear()

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
            day = key.split("|")[1]
            new = set(entry["n"])
            for item, changed in entry["c"].items():
                dimension, dimension_id = item.split("|", 1)
                stored = entry["i"][item]
                out.append((record_key(dimension, dimension_id, day, partition), route(dimension, dimension_id),
                            _json({"dimension": dimension, "dimension_id": dimension_id,
                                   "facility_id": stored["f"], "day": day, "partition": partition,
                                   **stored["b"], "changed": changed, "new": item in new})))
        return out


    def staged_days(self) -> dict[int, date]:
        """The latest day, per ADT partition, of the buckets the batch changed: how far in event
        time the batch's records bring a combiner that reads them."""
        latest: dict[int, str] = {}
        for key, (partition, entry) in self.table.pending.items():
            if key.startswith("k") and entry is not None and entry["c"]:
                day = key.split("|")[1]
                if day > latest.get(partition, ""):
                    latest[partition] = day
        return {partition: date.fromisoformat(day) for partition, day in latest.items()}


def bundles(records: Iterable[tuple[str, str, bytes]], partition_of: Callable[[str], int],
            limit: int = BUNDLE_BYTES) -> list[tuple[int, bytes]]:
    """``(partition, value)`` messages holding ``records`` (``(key, route, value)``, as
    :meth:`KpiTally.partials` gives them): each a JSON array of the records whose route maps to
    its partition, in their order, none over ``limit`` bytes unless one record is.

    >>> recs = [("a", "r1", b'{"x":1}'), ("b", "r2", b'{"x":2}'), ("c", "r1", b'{"x":3}')]
    >>> bundles(recs, lambda route: int(route[1]))
    [(1, b'[{"x":1},{"x":3}]'), (2, b'[{"x":2}]')]
    >>> bundles(recs, lambda route: 0, limit=17)  # 17 bytes: the first two fit
    [(0, b'[{"x":1},{"x":2}]'), (0, b'[{"x":3}]')]
    """
    by_partition: dict[int, list[list[bytes]]] = {}
    size: dict[int, int] = {}  # bytes of each partition's last chunk, with its brackets and commas
    for _key, route, value in records:
        partition = partition_of(route)
        chunks = by_partition.setdefault(partition, [[]])
        if chunks[-1] and size[partition] + len(value) + 1 > limit:
            chunks.append([])
        if not chunks[-1]:
            size[partition] = 1
        chunks[-1].append(value)
        size[partition] += len(value) + 1
    return [(partition, b"[" + b",".join(chunk) + b"]")
            for partition, chunks in sorted(by_partition.items()) for chunk in chunks]


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
    def parse_all(cls, raw: bytes) -> list["Partial"]:
        """The records of one ``hospital.kpi-partials`` message: a bundle (a JSON array) or
        one record (a capacity record, or a message written before bundles)."""
        d = orjson.loads(raw)
        return [cls._of(item) for item in d] if isinstance(d, list) else [cls._of(d)]

    @classmethod
    def parse(cls, raw: bytes) -> "Partial":
        """One record (not a bundle)."""
        return cls._of(orjson.loads(raw))

    @classmethod
    def _of(cls, d: dict[str, Any]) -> "Partial":
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
