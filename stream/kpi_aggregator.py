"""The KPI aggregator behind ``aggregate_kpis``: day buckets in, changed KPI windows out.

Formulas, buckets and windows come from :mod:`stream.domain.kpis`; this module only decides
*which* windows to (re-)emit and keeps the bookkeeping that makes the last message per window
equal to the value over all contributions, whatever the flush timing:

* ``days[dimension|id|YYYY-MM-DD]`` (a Faust table) = the day bucket, the contributions
  partition and offset that last changed it, and per ADT partition the source of the last
  contribution added (``s``). Bucket sums are not idempotent, so a contribution is added once:
  the ADT worker re-sends a message's contributions when it re-processes the message after a
  crash, and each ADT partition's contributions reach a bucket in source order, so one at or
  before the bucket's mark is a copy. The mark is written with the bucket, in the same record.
* ``meta[q{partition}]`` = offset of the last contribution applied (a re-delivered contribution is
  skipped) and the offset up to which a flush has gone out.
  After a restart every bucket changed after that point is dirty again, so no window is lost
  between the last flush and a stop.
* The flush runs on a wall-clock timer, outside any event, so it writes no table: once Kafka has
  acknowledged all its windows (:meth:`KpiAggregator.delivered`), the next contribution of each
  partition writes the "flushed" mark (a flush that was never marked is simply repeated; the
  values are the same). After a restart, a dimension whose days changed since then also
  re-sends the windows that were still future windows at that flush (after its last unchanged
  day), so a gap in a dimension's data loses none.
* Provider capacity (``hospital.reference``) arrives on this topic too, keyed like the provider's
  contributions (:meth:`KpiAggregator.capacity_record`), and is kept in ``meta[cap|{provider}]``.
* A census change on day d moves the census at the end of every later day too, so it dirties
  the census KPIs of every window holding a known day >= d.
* Memory is bounded by time, not by history: after each flush a dimension's day buckets older
  than ``keep_days`` behind its last day leave memory (they stay in the table) and their census
  deltas are folded into one number (``_base``). A contribution for an older day first brings
  the days its windows need back from the table (``_recall``). A capacity change re-sends only
  the windows of the days still in memory.
"""

from __future__ import annotations

import logging
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Callable, Iterator, MutableMapping
from datetime import date, timedelta
from typing import Any

import orjson

from stream.contracts import ProviderRef, format_ts, kpi_value_json, parse_reference
from stream.domain import kpis

log = logging.getLogger(__name__)

Dim = tuple[str, str]  # (dimension, dimension_id)
CENSUS_INPUTS = {"census_delta"}
CAPACITY = "capacity"  # pseudo-input: the provider's capacity changed
CAPACITY_KEY = "cap|"  # meta[cap|{provider_id}] = {capacity, q, o}: from hospital.reference
MAX_WINDOW = timedelta(days=max(kpis.WINDOWS.values()))
KEEP_DAYS = 120  # days of buckets kept in memory behind a dimension's last day (labels come <= 31 days late)


def kpi_key(kpi: str, dimension: str, dimension_id: str, window: str, window_start: str) -> str:
    """The ``hospital.kpis`` message key (the sink upserts by it); ``window_start`` formatted."""
    return f"{kpi}|{dimension}|{dimension_id}|{window}|{window_start}"


class KpiAggregator:
    def __init__(self, *, days: MutableMapping[str, Any], meta: MutableMapping[str, Any],
                 capacity: MutableMapping[str, Any], ready: Callable[[], bool] = lambda: True,
                 keep_days: int = KEEP_DAYS) -> None:
        if timedelta(days=keep_days) < 2 * MAX_WINDOW:
            raise ValueError(f"keep_days must be at least {2 * MAX_WINDOW.days} (two of the longest window)")
        self.days, self.meta, self.capacity, self.ready = days, meta, capacity, ready
        self.keep = timedelta(days=keep_days)
        self._loaded = False
        self._buckets: dict[Dim, dict[date, kpis.DayBucket]] = {}
        self._facility: dict[Dim, str] = {}
        self._marks: dict[str, dict[str, list[int]]] = {}  # bucket key -> ADT partition -> [offset, n]
        # dimension -> (old, new) last known day, since the last flush: windows ending in
        # (old + 1, new + 1] are no longer future windows and go out at the next flush
        self._advance: dict[Dim, tuple[date, date]] = {}
        self._dirty: dict[Dim, dict[date, set[str]]] = defaultdict(lambda: defaultdict(set))
        self._seen: dict[int, int] = {}  # partition -> last offset added
        # days before _floor[dim] are in the table only; _base[dim] = their census_delta sum (micro)
        self._floor: dict[Dim, date] = {}
        self._base: dict[Dim, int] = {}
        self._base_census: set[Dim] = set()  # dims whose pruned days moved the census at all
        self._flushed: dict[int, int] = {}  # partition -> last offset covered by a flush
        self._covering: dict[int, int] = {}  # the same for the flush not yet delivered

    # ------------------------------------------------------------------ state

    def forget_cache(self) -> None:
        """After a rebalance the tables are the truth: reload them before the next use."""
        self._loaded = False

    def _load(self) -> None:
        """Rebuild the in-memory buckets from the table; re-dirty what no flush covered."""
        self._buckets.clear()
        self._facility.clear()
        self._marks.clear()
        self._advance.clear()
        self._dirty.clear()
        self._floor.clear()
        self._base.clear()
        self._base_census.clear()
        flushed: dict[int, int] = {}
        meta = [(k, e) for k, e in list(self.meta.items()) if e]
        for key, entry in meta:
            if key.startswith("q"):
                flushed[int(key[1:])] = int(entry.get("flushed", -1))
        self._flushed = dict(flushed)
        self._seen = {int(k[1:]): int(e.get("offset", -1)) for k, e in meta if k.startswith("q")}
        clean_last: dict[Dim, date] = {}  # per dimension, the last day no change after a flush
        for key, entry in list(self.days.items()):
            dimension, dim_id, day_s = key.rsplit("|", 2)
            dim, day = (dimension, dim_id), date.fromisoformat(day_s)
            bucket = self._buckets.setdefault(dim, {})[day] = kpis.DayBucket.from_dict(entry["b"])
            self._facility[dim] = entry["f"]
            self._marks[key] = dict(entry.get("s") or {})
            if int(entry["o"]) > flushed.get(int(entry["q"]), -1):
                # every input this bucket ever had (the same KPIs its adds made dirty)
                self._dirty[dim][day] |= set(bucket.micro) | ({kpis.PATIENTS} if bucket.patients else set())
            elif day > clean_last.get(dim, date.min):
                clean_last[dim] = day
        for key, entry in meta:
            if key.startswith(CAPACITY_KEY):
                provider = key[len(CAPACITY_KEY):]
                self.capacity[provider] = entry["capacity"]
                if int(entry["o"]) > flushed.get(int(entry["q"]), -1):
                    self._dirty_capacity(provider)
        for dim in self._dirty:
            # The last flush knew the dimension up to clean_last at least, so it sent every window
            # ending by the day after; later ones were future windows then. (Those holding a dirty
            # day go out anyway; this brings the ones holding only older days, e.g. after a gap.)
            last, old = max(self._buckets[dim]), clean_last.get(dim)
            if old is not None and last > old:
                self._advance[dim] = (old, last)
        for dim in list(self._buckets):
            self._prune(dim)
        self._loaded = True

    def _prune(self, dim: Dim) -> None:
        """Move ``dim``'s day buckets older than the horizon out of memory (not out of the table).

        Kept: ``keep_days`` behind the last day, and every day a pending window may need (the
        longest window before a dirty day or a pending advance).
        """
        buckets = self._buckets.get(dim)
        if not buckets:
            return
        floor = max(buckets) - self.keep
        dirty = self._dirty.get(dim)
        if dirty:
            floor = min(floor, min(dirty) - MAX_WINDOW)
        if dim in self._advance:
            floor = min(floor, self._advance[dim][0] - MAX_WINDOW)
        if floor <= self._floor.get(dim, date.min):
            return
        old = [day for day in buckets if day < floor]
        for day in old:
            delta = buckets.pop(day).micro.get("census_delta", 0)
            if delta:
                self._base[dim] = self._base.get(dim, 0) + delta
                self._base_census.add(dim)
            self._marks.pop(kpis.bucket_key(*dim, day), None)
        self._floor[dim] = floor

    def _recall(self, dim: Dim, day: date) -> None:
        """Before a contribution for ``day``: bring back from the table the pruned days its
        windows hold (from the longest window before it), with their marks."""
        floor = self._floor.get(dim)
        start = day - MAX_WINDOW
        if floor is None or start >= floor:
            return
        buckets = self._buckets.setdefault(dim, {})
        for d in kpis.window_days(start, floor):
            key = kpis.bucket_key(*dim, d)
            entry = self.days.get(key)
            if entry:
                bucket = buckets[d] = kpis.DayBucket.from_dict(entry["b"])
                self._marks[key] = dict(entry.get("s") or {})
                self._base[dim] = self._base.get(dim, 0) - bucket.micro.get("census_delta", 0)
        self._floor[dim] = start

    def _ensure_loaded(self) -> None:
        if not self._loaded:
            self._load()

    # ------------------------------------------------------------------ inputs

    def applied_offset(self, partition: int) -> int:
        """The offset of the last contribution applied on ``partition`` (-1 for none)."""
        return int((self.meta.get(f"q{partition}") or {"offset": -1})["offset"])

    def add(self, raw: bytes, partition: int, offset: int) -> None:
        """Apply one ``hospital.kpi-contributions`` message (called inside the agent): a bundle
        of contributions (a JSON array, ``adt_flow.bundle``), one contribution, or a capacity."""
        self._ensure_loaded()
        qkey = f"q{partition}"
        m = self.meta.get(qkey) or {"offset": -1, "flushed": -1}
        if offset <= int(m["offset"]):
            return
        record = orjson.loads(raw)
        if isinstance(record, dict) and "capacity" in record:  # see capacity_record
            self._set_capacity(record["provider_id"], record["capacity"], partition, offset)
        else:
            touched: dict[str, kpis.Contribution] = {}
            for item in record if isinstance(record, list) else [record]:
                c = kpis.Contribution.from_dict(item)
                self._recall((c.dimension, c.dimension_id), c.day)
                if self._is_copy(c):
                    log.debug("skip a re-sent contribution source=%s", c.source)
                else:
                    self._apply(c)
                    touched[c.bucket_key] = c
            for key, c in touched.items():  # each bucket written once, with its marks
                bucket = self._buckets[(c.dimension, c.dimension_id)][c.day]
                self.days[key] = {"b": bucket.to_dict(), "f": c.facility_id, "q": partition, "o": offset,
                                  "s": self._marks[key]}
        self._seen[partition] = offset
        self.meta[qkey] = {"offset": offset,
                           "flushed": max(int(m["flushed"]), self._flushed.get(partition, -1))}

    def _is_copy(self, c: kpis.Contribution) -> bool:
        if c.source is None:
            return False
        mark = self._marks.get(c.bucket_key, {}).get(str(c.source[0]))
        return mark is not None and (c.source[1], c.source[2]) <= (mark[0], mark[1])

    def _apply(self, c: kpis.Contribution) -> None:
        """Add ``c`` to its bucket in memory, mark its source, note what it made dirty (the
        caller writes the bucket)."""
        dim = (c.dimension, c.dimension_id)
        days = self._buckets.setdefault(dim, {})
        bucket = days.get(c.day)
        if bucket is None:
            last = max(days) if days else None
            if last is not None and c.day > last:
                old = self._advance.get(dim, (last, last))[0]
                self._advance[dim] = (old, c.day)
            bucket = days[c.day] = kpis.DayBucket()
        changed = bucket.add(c)
        self._facility[dim] = c.facility_id
        marks = self._marks.setdefault(c.bucket_key, {})
        if c.source is not None:
            marks[str(c.source[0])] = [c.source[1], c.source[2]]
        if changed:
            self._dirty[dim][c.day] |= changed

    @staticmethod
    def capacity_record(raw: bytes) -> tuple[str, bytes] | None:
        """A ``hospital.reference`` record as (key, value) for ``hospital.kpi-contributions``.

        Provider capacity travels the contributions topic, keyed like the provider's
        contributions, so it reaches the aggregator partition holding that provider's buckets,
        in order with them, on whichever worker owns it (a global table reached another worker
        late, and windows went out without their denominator). None if not a provider record.
        """
        try:
            record = parse_reference(raw)
        except ValueError:
            log.warning("ignoring an invalid reference record")
            return None
        if not isinstance(record, ProviderRef):
            return None
        key = f"provider|{record.provider_id}"
        return key, orjson.dumps({"provider_id": record.provider_id, "capacity": record.capacity})

    def _set_capacity(self, provider: str, capacity: Any, partition: int, offset: int) -> None:
        if self.capacity.get(provider) == capacity:
            return
        self.capacity[provider] = capacity
        self.meta[f"{CAPACITY_KEY}{provider}"] = {"capacity": capacity, "q": partition, "o": offset}
        self._dirty_capacity(provider)

    def _dirty_capacity(self, provider: str) -> None:
        dim = ("provider", provider)
        for day in self._buckets.get(dim, {}):
            self._dirty[dim][day].add(CAPACITY)

    # ------------------------------------------------------------------ output

    def flush(self) -> list[tuple[str, bytes]]:
        """(key, KpiValue JSON) for every KPI window whose inputs changed since the last flush
        (taken as delivered: :meth:`delivered` is called)."""
        out = [kv for batch in self.flush_batches() for kv in batch]
        self.delivered()
        return out

    def flush_batches(self) -> Iterator[list[tuple[str, bytes]]]:
        """The same as :meth:`flush`, one dimension at a time (the caller may yield in between).

        The dirty set is taken at the first step, so contributions added meanwhile wait for the
        next flush. The caller calls :meth:`delivered` once Kafka has acknowledged every message.
        """
        self._covering = {}
        if not self._loaded:
            if not self.ready():
                return
            self._load()
        covered = dict(self._seen)
        if not self._dirty and not self._advance:
            self._covering = covered
            return
        dirty, self._dirty = self._dirty, defaultdict(lambda: defaultdict(set))
        advance, self._advance = self._advance, {}
        for dim in {**dirty, **advance}:
            yield self._emit(dim, dirty.get(dim, {}), advance.get(dim))
            self._prune(dim)
        self._covering = covered

    def delivered(self) -> None:
        """Every message of the last :meth:`flush_batches` is in Kafka: from now on the next
        contribution of each partition may record its offsets as flushed. (Recorded any earlier,
        a worker killed before the acknowledgements would restart without re-sending them.)"""
        self._flushed.update(self._covering)
        self._covering = {}

    def pending_days(self) -> int:
        """How many (dimension, day) pairs wait for the next flush (each pins its buckets)."""
        return sum(len(days) for days in self._dirty.values())

    def covered(self) -> dict[int, int]:
        """Contributions partition -> last offset whose KPI windows a completed flush sent."""
        return dict(self._flushed)

    def _emit(self, dim: Dim, dirty_days: dict[date, set[str]],
              advance: tuple[date, date] | None = None) -> list[tuple[str, bytes]]:
        """The KPI messages of ``dim``'s windows that hold a dirty day or newly closed in.

        Future windows (ending after the dimension's last known day + 1) are not sent: the
        current window holds the last day, and a later window goes out once the dimension has
        data on a later day (``advance``). So new events re-send 3 windows per day, not 38.
        """
        dimension, dim_id = dim
        buckets = self._buckets.get(dim, {})
        known = sorted(buckets)
        if not known:
            return []
        limit = known[-1] + _ONE_DAY
        # window -> changed inputs
        windows: dict[tuple[str, date, date], set[str]] = defaultdict(set)
        census_from: date | None = None
        for day, changed in dirty_days.items():
            for w in kpis.day_windows(day):
                if w[2] <= limit:
                    windows[w] |= changed
            if changed & (CENSUS_INPUTS | {CAPACITY}):
                census_from = day if census_from is None else min(census_from, day)
        if census_from is not None:
            for day in known:
                if day > census_from:
                    for w in kpis.day_windows(day):
                        if w[2] <= limit:
                            windows[w] |= CENSUS_INPUTS
        if advance is not None:
            for end in kpis.window_days(advance[0] + 2 * _ONE_DAY, min(advance[1], known[-1]) + 2 * _ONE_DAY):
                for name, n in kpis.WINDOWS.items():
                    start = end - timedelta(days=n)
                    i = bisect_left(known, start)
                    if i < len(known) and known[i] < end:  # the window holds a known day
                        windows[(name, start, end)] |= _inputs(buckets, known, start, end,
                                                               dim in self._base_census)
        if not windows:
            return []
        # Census at the end of every day, and running sums of the buckets (a window's totals are
        # two lookups), from ``origin``: the first day any of these windows holds (not the first
        # day in memory, up to keep_days earlier). The census before it is one sum.
        first = min(known[0], self._floor.get(dim, known[0]))
        origin = max(first, min(start for _, start, _ in windows))
        last_end = max(end for _, _, end in windows)
        census_at: dict[date, float] = {}
        total = self._base.get(dim, 0) + sum(  # micro units: exact, whatever the origin
            buckets[d].micro.get("census_delta", 0) for d in known[:bisect_left(known, origin)])
        running: dict[str, int] = {}
        sums: list[dict[str, int]] = [{}]  # sums[i] = the days from origin to origin + i
        for day in kpis.window_days(origin, max(last_end, known[-1] + _ONE_DAY)):
            b = buckets.get(day)
            if b is not None:
                total += b.micro.get("census_delta", 0)
                running = {**running, **{k: running.get(k, 0) + v for k, v in b.micro.items()}}
            census_at[day] = total / kpis.SCALE
            sums.append(running)
        capacity = self.capacity.get(dim_id) if dimension == "provider" else None
        facility_id = self._facility.get(dim, "")
        out: list[tuple[str, bytes]] = []
        for (window, start, end), changed in sorted(windows.items()):
            names = kpis.affected_kpis(changed | ({"census_delta"} if CAPACITY in changed else set()),
                                       dimension)
            if not names:
                continue
            wdays = kpis.window_days(start, end)
            before, upto = sums[max(0, (start - origin).days)], sums[(end - origin).days]
            values = kpis.window_values(
                [b for d in wdays if (b := buckets.get(d)) is not None],
                [census_at.get(d, 0.0) for d in wdays],
                float(capacity) if capacity else None,
                dimension,
                totals={k: v - before.get(k, 0) for k, v in upto.items()},
            )
            ws, we = format_ts(kpis.day_start(start)), format_ts(kpis.day_start(end))
            for name in names:
                value, num, den = values[name]
                out.append((kpi_key(name, dimension, dim_id, window, ws),
                            kpi_value_json(name, dimension, dim_id, facility_id, window, ws, we,
                                           value, num, den)))
        return out


_ONE_DAY = timedelta(days=1)


def _inputs(buckets: dict[date, kpis.DayBucket], known: list[date], start: date, end: date,
            census_before: bool = False) -> set[str]:
    """Every input a window's KPIs have: its buckets' fields, and the census once any day up to
    its end moved it, pruned days included (the same KPIs that the flushes of its days' changes
    would have sent)."""
    out: set[str] = set()
    for day in known[bisect_left(known, start):bisect_left(known, end)]:
        b = buckets[day]
        out |= set(b.micro) | ({kpis.PATIENTS} if b.patients else set())
    if "census_delta" not in out and (census_before or any("census_delta" in buckets[d].micro
                                                           for d in known[:bisect_left(known, end)])):
        out |= CENSUS_INPUTS
    return out
