"""The KPI combiner behind ``combine_kpis``: day partials in, changed KPI windows out.

Formulas, buckets and windows come from :mod:`stream.domain.kpis`; the records from
``stream/kpi_tally.py``. This module keeps, per dimension and day, the latest partial of each
ADT partition and their sum, and decides *which* windows to (re-)emit, so that the last message
per window equals the value over every partial, whatever the flush timing:

* ``days`` (a Faust table) holds, per partition of the records' topic and day,
  :data:`~stream.kpi_tally.SHARDS` entries ``d{partition}|YYYY-MM-DD|{shard}`` =
  ``{"{dimension}|{id}": {"f": {ADT partition: facility_id}, "p": {ADT partition: DayBucket}}}``
  (the shard as in
  ``stream/kpi_tally.py``: a batch of records is a few table writes, not one per record; the
  partition in the key, because Faust keeps a table's keys per partition): replace semantics,
  so a record sent again changes nothing and needs no marks. ``days[cap|{provider}]`` = the provider's capacity (its record on the same topic).
* A record marks the windows of its day dirty for the KPIs whose inputs its batch changed (the
  record says which); the flush (a wall-clock timer) sends them. The agent does not acknowledge
  a record before a flush that covers it has been acknowledged by Kafka (``stream/kpi_agent.py``), so
  Kafka's committed offset on ``hospital.kpi-partials`` is the combiner's one offset truth:
  after a crash the records past it are delivered again, and since each one names what its
  batch changed, their windows go out again even where the table holds their values already.
  Nothing else is remembered about flushes.
* A census change on day d moves the census at the end of every later day too, so it dirties
  the census KPIs of every window holding a known day >= d.
* A window's ``facility_id`` is the facility of its latest record: the one of the highest ADT
  partition on its last known day (a department name can span facilities). It depends on the
  window's data only, not on when it is sent, so a window re-sent after a fault carries the
  same label; the view ``kpi_windows`` picks it the same way. A record that moves that label
  (a new partition on a window's last known day, with another facility) re-sends those windows
  (:data:`RELABEL`).
* In a backlog (a replay, a catch-up) a window's KPIs would go out again at every flush that
  crosses its days, and its label-driven KPIs again for 30 event days after it ends. A
  *settling* flush (:meth:`KpiCombiner.flush_batches` with ``settle=True``) holds each KPI of a
  window until the event-time frontier of its input partition (the earliest of the ADT
  partitions' latest days among the records of that hospital.kpi-partials partition: each ADT
  partition's records come in its event order there, but the input partitions are read
  unevenly) is :data:`SETTLE_DAYS` past the window's end, so a replay sends about one message
  per window;
  a flush that does not settle sends everything held. Held KPIs are not remembered across a
  crash: the agent acknowledges a record only once the frontier is
  :meth:`KpiCombiner.release_day` (every KPI its flush held has settled), so the records behind
  a held KPI come again after a restart and hold it again.
* Memory is bounded by time, not by history: after each flush a dimension's day buckets older
  than ``keep_days`` behind its last day leave memory (they stay in the table) and their census
  deltas are folded into one number (``_base``). A record for an older day first brings the
  days its windows need back from the table (``_recall``). A capacity change re-sends only
  the windows of the days still in memory.
"""

from __future__ import annotations

import logging
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Callable, Iterator, MutableMapping
from datetime import date, timedelta
from typing import Any

from contracts.events import format_ts, kpi_value_json
from stream.domain import kpis
from stream.kpi_tally import Partial, item_key, shard

log = logging.getLogger(__name__)

Dim = tuple[str, str]  # (dimension, dimension_id)
CENSUS_INPUTS = {"census_delta"}
CAPACITY = "capacity"  # pseudo-input: the provider's capacity changed
RELABEL = "facility"  # pseudo-input: the facility label of the windows ending with this day changed
CAPACITY_KEY = "cap|"  # days[cap|{provider_id}] = {"capacity": ...}
MAX_WINDOW = timedelta(days=max(kpis.WINDOWS.values()))
# records from an ADT partition this far behind the latest day known, in event time: the combiner
# reads a backlog (:meth:`KpiCombiner.lagging`; a live stream's partitions are hours apart)
LAG = timedelta(days=2)
KEEP_DAYS = 120  # days of buckets kept in memory behind a dimension's last day (labels come <= 31 days late)
# Event days past a window's end (exclusive) after which a KPI's inputs are all in, when the
# partials come in event-time order: a readmission label is known by discharge + 30 days; the
# rest on the day they happen (one day more: ADT partitions are read unevenly). A KPI that
# changes later still goes out again; this only decides how long a settling flush holds it.
SETTLE_DAYS: dict[str, int] = {k: 31 if kpis.KPI_INPUTS[k] & kpis.LABEL_FIELDS else 1 for k in kpis.ALL_KPIS}


def day_key(partition: int, dim: Dim, day: date) -> str:
    """The ``days`` entry holding ``dim``'s bucket of ``day`` (``dim``'s records come on
    ``partition``).

    >>> day_key(3, ("facility", "F01"), date(2025, 1, 31))
    'd3|2025-01-31|7'
    """
    return f"d{partition}|{day.isoformat()}|{shard(item_key(*dim))}"


def kpi_key(kpi: str, dimension: str, dimension_id: str, window: str, window_start: str) -> str:
    """The ``hospital.kpis`` message key (the sink upserts by it); ``window_start`` formatted."""
    return f"{kpi}|{dimension}|{dimension_id}|{window}|{window_start}"


def summed(parts: dict[str, Any]) -> kpis.DayBucket:
    """The day bucket of a dimension: its ADT partitions' buckets added up (exact integers;
    the patient sets are disjoint, since a patient's events stay on one partition)."""
    micro: dict[str, int] = {}
    patients: set[str] = set()
    for part in parts.values():  # stored dicts (DayBucket.to_dict), added without a DayBucket each
        for k, v in part["micro"].items():
            micro[k] = micro.get(k, 0) + int(v)
        patients.update(part["patients"])
    return kpis.DayBucket(patients=patients, micro=micro)


def _inputs_of(b: kpis.DayBucket) -> set[str]:
    return set(b.micro) | ({kpis.PATIENTS} if b.patients else set())


class KpiCombiner:
    """Partials in (:meth:`put`), the KPI windows they changed out (:meth:`flush_batches`).

    ``days`` is the agent's ``kpi_days`` table (a plain dict in tests); ``ready`` says whether
    the table is recovered (no flush before it is); ``keep_days`` bounds the buckets in memory.
    """

    def __init__(self, *, days: MutableMapping[str, Any], ready: Callable[[], bool] = lambda: True,
                 keep_days: int = KEEP_DAYS) -> None:
        if timedelta(days=keep_days) < 2 * MAX_WINDOW:
            raise ValueError(f"keep_days must be at least {2 * MAX_WINDOW.days} (two of the longest window)")
        self.days, self.ready = days, ready
        self.keep = timedelta(days=keep_days)
        self.capacity: dict[str, float] = {}
        self._loaded = False
        self._buckets: dict[Dim, dict[date, kpis.DayBucket]] = {}
        # per dimension and day in memory: ADT partition -> the facility of its record (labels)
        self._facility: dict[Dim, dict[date, dict[int, str]]] = {}
        # dimension -> (old, new) last known day, since the last flush: windows ending in
        # (old + 1, new + 1] are no longer future windows and go out at the next flush
        self._advance: dict[Dim, tuple[date, date]] = {}
        self._dirty: dict[Dim, dict[date, set[str]]] = defaultdict(lambda: defaultdict(set))
        # days before _floor[dim] are in the table only; _base[dim] = their census_delta sum (micro)
        self._floor: dict[Dim, date] = {}
        self._base: dict[Dim, int] = {}
        self._base_census: set[Dim] = set()  # dims whose pruned days moved the census at all
        # per dimension and the day they settle: window -> the KPIs a settling flush held back
        self._held: dict[Dim, dict[date, dict[tuple[str, date, date], set[str]]]] = {}
        self._held_next: dict[Dim, date] = {}  # the frontier at which a held KPI of dim settles
        # (input partition, ADT partition) -> the latest day of the ADT partition's records there
        self._latest: dict[tuple[int, int], date] = {}
        self._active: set[tuple[int, int]] = set()  # those (input, ADT partition) put since the last flush
        self._input: dict[Dim, int] = {}  # dimension -> the input partition its records come on

    # ------------------------------------------------------------------ state

    def forget_cache(self) -> None:
        """After a rebalance the tables are the truth: reload them before the next use (and
        drop what was dirty: the records not acknowledged are delivered again)."""
        self._loaded = False

    def _load(self) -> None:
        """Rebuild the in-memory buckets from the table."""
        for cache in (self._buckets, self._facility, self._advance, self._dirty, self._floor,
                      self._base, self._base_census, self.capacity, self._held, self._held_next):
            cache.clear()
        self._latest.clear()
        self._input.clear()
        for key, entry in list(self.days.items()):
            if not entry:
                continue
            if key.startswith(CAPACITY_KEY):
                self.capacity[key[len(CAPACITY_KEY):]] = entry["capacity"]
                continue
            day = date.fromisoformat(key.split("|")[1])
            source = int(key[1:key.index("|")])  # day_key: d{input partition}|...
            for item, stored in entry.items():
                dimension, dim_id = item.split("|", 1)
                dim = (dimension, dim_id)
                self._input[dim] = source
                for partition in stored["p"]:
                    self._saw(source, int(partition), day)
                self._buckets.setdefault(dim, {})[day] = summed(stored["p"])
                self._note_facilities(dim, day, stored["f"])
        for dim in list(self._buckets):
            self._prune(dim)
        self._active.clear()
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
        held = self._held.get(dim)
        if held:
            floor = min(floor, min(start for windows in held.values() for _, start, _ in windows))
        if floor <= self._floor.get(dim, date.min):
            return
        old = [day for day in buckets if day < floor]
        labels = self._facility.get(dim, {})
        for day in old:
            labels.pop(day, None)
            delta = buckets.pop(day).micro.get("census_delta", 0)
            if delta:
                self._base[dim] = self._base.get(dim, 0) + delta
                self._base_census.add(dim)
        self._floor[dim] = floor

    def _recall(self, dim: Dim, day: date, partition: int) -> None:
        """Before a record for ``day``: bring back from the table the pruned days its windows
        hold (from the longest window before it)."""
        floor = self._floor.get(dim)
        start = day - MAX_WINDOW
        if floor is None or start >= floor:
            return
        buckets = self._buckets.setdefault(dim, {})
        item = item_key(*dim)
        for d in kpis.window_days(start, floor):
            entry = (self.days.get(day_key(partition, dim, d)) or {}).get(item)
            if entry:
                bucket = buckets[d] = summed(entry["p"])
                self._note_facilities(dim, d, entry["f"])
                self._base[dim] = self._base.get(dim, 0) - bucket.micro.get("census_delta", 0)
        self._floor[dim] = start

    def _ensure_loaded(self) -> None:
        if not self._loaded:
            self._load()

    # ------------------------------------------------------------------ inputs

    def put(self, raw: bytes, partition: int = 0) -> None:
        """Apply one ``hospital.kpi-partials`` message of ``partition`` (called inside the agent,
        under the message's partition): each record it holds replaces the one kept for its key."""
        self._ensure_loaded()
        for p in Partial.parse_all(raw):
            self._put(p, partition)

    def _put(self, p: Partial, partition: int) -> None:
        if p.day is None:
            self._set_capacity(p.dimension_id, p.capacity)
            return
        assert p.bucket is not None and p.partition is not None
        dim, day = (p.dimension, p.dimension_id), p.day
        self._saw(partition, p.partition, day)
        self._input[dim] = partition
        self._recall(dim, day, partition)
        key, item = day_key(partition, dim, day), item_key(*dim)
        shard = self.days.get(key) or {}
        stored = shard.get(item) or {"f": {}, "p": {}}
        parts = {**stored["p"], str(p.partition): p.bucket.to_dict()}
        self.days[key] = {**shard, item: {"f": {**stored["f"], str(p.partition): p.facility_id}, "p": parts}}
        days = self._buckets.setdefault(dim, {})
        old = days.get(day)
        if old is None or p.new:
            # a new day (or a record that created its bucket, delivered again after a crash:
            # its day is known already): the windows ending after the known day before it, up
            # to the day after it, are no longer future windows
            before = max((d for d in days if d < day), default=None)
            if before is not None:
                self._advance_over(dim, before, day)
        new = days[day] = summed(parts)
        self._note_facilities(dim, day, {p.partition: p.facility_id})
        changed = set(p.changed) | (_inputs_of(new) if old is None else _changed(old, new))
        if p.new and self._relabels(dim, day, p.partition):
            changed.add(RELABEL)
        self._dirty[dim][day] |= changed

    def _saw(self, source: int, partition: int, day: date) -> None:
        pair = (source, partition)
        self._active.add(pair)
        if day > self._latest.get(pair, date.min):
            self._latest[pair] = day

    @property
    def put_since_flush(self) -> bool:
        """Whether a record was put since the last flush (:meth:`lagging` looks at those)."""
        return bool(self._active)

    def lagging(self, sent: date | None = None, lag: timedelta = LAG) -> bool:
        """Whether records put since the last flush came from an input partition, or from an
        ADT partition, that has got no further than ``lag`` behind the latest day known (put
        here, or ``sent``: the latest day of the records the worker's own ADT side sent). Then
        the combiner reads a backlog: the tail of a replay, an input partition Faust reads weeks
        behind the others, another worker's ADT partitions behind this one's. In a live stream
        every input and ADT partition has records of the last hours (a label's record for an
        old day comes with them), and one that went quiet sends nothing, so it is left out.
        """
        if not self._active:
            return False
        top = max(self._latest.values())
        if sent is not None and sent > top:
            top = sent
        by_input: dict[int, date] = {}  # input partition -> its latest day
        by_adt: dict[int, date] = {}  # ADT partition -> its latest day, on any input partition
        for (source, adt), day in self._latest.items():
            by_input[source] = max(day, by_input.get(source, day))
            by_adt[adt] = max(day, by_adt.get(adt, day))
        return any(top - by_input[source] >= lag or top - by_adt[adt] >= lag for source, adt in self._active)

    @property
    def frontier(self) -> date | None:
        """The earliest input partition's frontier (:meth:`_frontiers`): by it the KPI agent
        acknowledges the records behind held KPIs. None: no day."""
        return min(self._frontiers().values(), default=None)

    def _frontiers(self) -> dict[int, date]:
        """Per input partition, its event-time watermark: the earliest of the ADT partitions'
        latest days among its records (an ADT partition seen elsewhere but not there yet:
        ``date.min``, so nothing there settles). A dimension's records all come on one input
        partition, in each ADT partition's event order; Faust reads the input partitions
        unevenly."""
        adts = {adt for _, adt in self._latest}
        sources = {source for source, _ in self._latest}
        return {source: min(self._latest.get((source, adt), date.min) for adt in adts) for source in sources}

    def _note_facilities(self, dim: Dim, day: date, facilities: dict[Any, str]) -> None:
        labels = self._facility.setdefault(dim, {}).setdefault(day, {})
        labels.update({int(partition): f for partition, f in facilities.items()})

    def _label(self, dim: Dim, day: date) -> str:
        """The facility of ``dim``'s record from the highest ADT partition on ``day``."""
        labels = self._facility[dim][day]
        return labels[max(labels)]

    def _relabels(self, dim: Dim, day: date, partition: int) -> bool:
        """Whether the first record of ``partition`` for ``day`` changed the label of the
        windows whose last known day is ``day``: it is the day's highest partition and its
        facility differs from the label those windows had without it. Decided on the state
        with the record in, so a record delivered again after a crash decides the same."""
        labels = self._facility[dim][day]
        if partition != max(labels):
            return False
        others = [q for q in labels if q != partition]
        if others:
            before = labels[max(others)]
        else:
            earlier = [d for d in self._buckets[dim] if d < day]
            if not earlier:
                return False  # no window ending after this day had a label before it
            before = self._label(dim, max(earlier))
        return labels[partition] != before

    def _advance_over(self, dim: Dim, before: date, day: date) -> None:
        """Note that the windows ending in ``(before + 1, day + 1]`` go out at the next flush."""
        old, new = self._advance.get(dim, (before, day))
        self._advance[dim] = (min(old, before), max(new, day))

    def _set_capacity(self, provider: str, capacity: float | None) -> None:
        """A provider's capacity record; one delivered again re-sends its windows too."""
        if capacity is None:
            self.capacity.pop(provider, None)
            self.days.pop(f"{CAPACITY_KEY}{provider}", None)
        else:
            self.capacity[provider] = capacity
            self.days[f"{CAPACITY_KEY}{provider}"] = {"capacity": capacity}
        dim = ("provider", provider)
        for day in self._buckets.get(dim, {}):
            self._dirty[dim][day].add(CAPACITY)

    # ------------------------------------------------------------------ output

    def flush(self) -> list[tuple[str, bytes]]:
        """(key, KpiValue JSON) for every KPI window whose inputs changed since the last flush."""
        return [kv for batch in self.flush_batches() or () for kv in batch]

    def flush_batches(self, settle: bool = False) -> Iterator[list[tuple[str, bytes]]] | None:
        """The same as :meth:`flush`, one dimension at a time (the caller may yield in between);
        None while the table is not recovered. ``settle``: hold back the KPIs of windows that
        have not settled (:data:`SETTLE_DAYS`); without it, what earlier flushes held goes too.

        The dirty set is taken when this is called, so records put meanwhile wait for the next
        flush (and the caller acknowledges only the records put before the call).
        """
        if not self._loaded:
            if not self.ready():
                return None
            self._load()
        dirty, self._dirty = self._dirty, defaultdict(lambda: defaultdict(set))
        advance, self._advance = self._advance, {}
        self._active = set()
        return self._batches(dirty, advance, self._frontiers() if settle else None)

    def release_day(self) -> date | None:
        """The frontier at which every KPI that a flush called now holds has settled: the
        records put before the call may be acknowledged after a settling flush at that frontier
        (every window a flush sends or holds ends by the day after the latest day put). None:
        no day put yet."""
        if not self._latest:
            return None
        return max(self._latest.values()) + timedelta(days=1 + max(SETTLE_DAYS.values()))

    def _frontier_of(self, dim: Dim, frontiers: dict[int, date] | None) -> date | None:
        """``dim``'s frontier in a settling flush (``frontiers`` None: not settling)."""
        if frontiers is None:
            return None
        return frontiers.get(self._input.get(dim, -1), date.min)

    def _batches(self, dirty: dict[Dim, dict[date, set[str]]], advance: dict[Dim, tuple[date, date]],
                 frontiers: dict[int, date] | None) -> Iterator[list[tuple[str, bytes]]]:
        due = [dim for dim, day in self._held_next.items()
               if frontiers is None or day <= self._frontier_of(dim, frontiers)]
        for dim in {**dirty, **advance, **dict.fromkeys(due)}:
            yield self._emit(dim, dirty.get(dim, {}), advance.get(dim), self._frontier_of(dim, frontiers))
            self._prune(dim)

    def pending_days(self) -> int:
        """How many (dimension, day) pairs wait for the next flush (each pins its buckets)."""
        return sum(len(days) for days in self._dirty.values())

    def _emit(self, dim: Dim, dirty_days: dict[date, set[str]],
              advance: tuple[date, date] | None = None, frontier: date | None = None) -> list[tuple[str, bytes]]:
        """The KPI messages of ``dim``'s windows that hold a dirty day or newly closed in, and
        of those held before; with ``frontier`` (a settling flush), those settled by it.

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
            if RELABEL in changed:
                # every KPI of the windows whose last known day this is: their label moved
                changed = changed - {RELABEL}
                i = bisect_left(known, day) + 1
                upto = known[i] if i < len(known) else limit
                for w in kpis.day_windows(day):
                    if w[2] <= upto:
                        windows[w] |= _inputs(buckets, known, w[1], w[2], dim in self._base_census)
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
        names = self._settled(dim, {w: kpis.affected_kpis(changed | ({"census_delta"} if CAPACITY in changed
                                                                      else set()), dimension)
                                    for w, changed in windows.items()}, frontier)
        if not names:
            return []
        # Census at the end of every day, and running sums of the buckets (a window's totals are
        # two lookups), from ``origin``: the first day any of these windows holds (not the first
        # day in memory, up to keep_days earlier). The census before it is one sum.
        first = min(known[0], self._floor.get(dim, known[0]))
        origin = max(first, min(start for _, start, _ in names))
        last_end = max(end for _, _, end in names)
        census_at: dict[date, float] = {}
        total = self._base.get(dim, 0) + sum(  # micro units: exact, whatever the origin
            buckets[d].micro.get("census_delta", 0) for d in known[:bisect_left(known, origin)])
        running: dict[str, int] = {}
        sums: list[dict[str, int]] = [{}]  # sums[i] = the days from origin to origin + i
        for day in kpis.window_days(origin, max(last_end, known[-1] + _ONE_DAY)):
            b = buckets.get(day)
            if b is not None:
                total += b.micro.get("census_delta", 0)
                running = running.copy()
                for k, v in b.micro.items():
                    running[k] = running.get(k, 0) + v
            census_at[day] = total / kpis.SCALE
            sums.append(running)
        capacity = self.capacity.get(dim_id) if dimension == "provider" else None
        out: list[tuple[str, bytes]] = []
        for (window, start, end), kpi_names in sorted(names.items()):
            facility_id = self._label(dim, known[bisect_left(known, end) - 1])
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
            for name in kpi_names:
                value, num, den = values[name]
                out.append((kpi_key(name, dimension, dim_id, window, ws),
                            kpi_value_json(name, dimension, dim_id, facility_id, window, ws, we,
                                           value, num, den)))
        return out

    def _settled(self, dim: Dim, names: dict[tuple[str, date, date], list[str]],
                 frontier: date | None) -> dict[tuple[str, date, date], list[str]]:
        """The KPIs to send now per window: ``names`` (of the dirty windows) and those held
        before; with ``frontier``, the rest are held (:data:`SETTLE_DAYS`). Held KPIs are kept
        by the day they settle, so a flush looks only at those it releases."""
        held = self._held.pop(dim, {})  # settle day -> window -> KPIs
        out: dict[tuple[str, date, date], set[str]] = {}
        for w, kpi_names in names.items():
            for k in kpi_names:
                settles = w[2] + _SETTLE[k]
                if frontier is None or settles <= frontier:
                    out.setdefault(w, set()).add(k)
                else:
                    held.setdefault(settles, {}).setdefault(w, set()).add(k)
        for day in [d for d in held if frontier is None or d <= frontier]:
            for w, ks in held.pop(day).items():
                out.setdefault(w, set()).update(ks)
        if held:
            self._held[dim], self._held_next[dim] = held, min(held)
        else:
            self._held_next.pop(dim, None)
        return {w: [k for k in kpis.ALL_KPIS if k in ks] for w, ks in out.items()}


_ONE_DAY = timedelta(days=1)
_SETTLE = {k: timedelta(days=n) for k, n in SETTLE_DAYS.items()}


def _changed(old: kpis.DayBucket, new: kpis.DayBucket) -> set[str]:
    """The inputs whose value differs between two buckets of the same day."""
    out = {k for k in set(old.micro) | set(new.micro) if old.micro.get(k, 0) != new.micro.get(k, 0)}
    return out | ({kpis.PATIENTS} if old.patients != new.patients else set())


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
