"""The model-health monitor (agent ``monitor_health``), over plain mappings.

Consumes ``hospital.health-partials``: the ABSOLUTE day records each ADT partition keeps per
(facility, day) (``stream/health_tally.py``). All of a facility's records reach one partition of
that topic, so one monitor sees the whole facility. It keeps the last record per (facility, day,
ADT partition) in its table, sums the partitions, and evaluates the checks of the windows a
batch touched (``stream/domain/health.py``):

* ``psi_score`` / ``psi_feature``, per day ``window_end``: the 28 days before it against the 28
  days before those, when each holds >= 500 discharges;
* ``equity_recall`` / ``equity_oe``, per day ``window_end``: the 90 days before it, once every
  index discharge in them has its label (before that the known labels are mostly readmissions,
  which come first, and observed / expected would be far too high).

Windows starting in the facility's first 90 days (from its first discharge) are skipped: the
models are still learning and their scores move. Every evaluation is sent, ``ok`` included.

Why replace semantics: a record sent again (a crash, a re-processed batch) replaces the one
kept, so nothing counts twice and no offsets are needed. The evaluation of a window uses only
the records of its days (and the facility's first day), so its last message, sent after the last
change to any of its days, is the same however the batches were cut.

Table keys: ``d|{facility}|{YYYY-MM-DD}|{adt partition}`` (a record), ``f|{facility}`` (its
first and last day, and the ADT partitions seen).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, MutableMapping
from contextlib import nullcontext
from datetime import date, timedelta
from typing import Any

from contracts.events import ModelHealth, dump
from stream.domain import health
from stream.domain.kpis import window_days
from stream.health_tally import parse_partial
from stream.staged import PartitionScope

PSI_SPAN = 2 * health.PSI_WINDOW_DAYS
EQUITY_SPAN = health.EQUITY_WINDOW_DAYS


def _day(value: str) -> date:
    return date.fromisoformat(value)


class _Totals:
    """A facility's records summed over the ADT partitions, per day, kept in ``days`` (the
    monitor keeps them from one evaluation to the next, dropping a day when a record of it
    changes)."""

    def __init__(self, table: MutableMapping[str, Any], facility_id: str, partitions: list[int],
                 days: dict[date, dict[str, Any] | None]) -> None:
        self.table, self.facility_id, self.partitions = table, facility_id, partitions
        self._days = days

    def day(self, d: date) -> dict[str, Any] | None:
        if d not in self._days:
            total: dict[str, Any] | None = None
            for p in self.partitions:
                rec = self.table.get(f"d|{self.facility_id}|{d.isoformat()}|{p}")
                if rec is not None:
                    total = total or health.empty_day()
                    health.add_day(total, rec)
            self._days[d] = total
        return self._days[d]

    def windows(self, ends: list[date], days: int, back: int = 0) -> Iterator[tuple[date, date, dict[str, Any]]]:
        """``(start, end, counts)`` of the windows ``[end - back - days, end - back)`` for each
        of ``ends`` (ascending): ``counts`` adds up the window's day records, carried from one
        window to the next (the days entering added, those leaving taken out), so read it before
        the next. Counts are integers, so carrying them is exact; the one float, a label row's
        sum of scores, is left to :meth:`sum_scores`. (Summing each window afresh, ~90 x 90
        record additions per day whose labels changed, took most of a worker's time late in a
        replayed year.)"""
        run, held = health.empty_day(), None  # the running counts and the window they hold
        for end in ends:
            end -= timedelta(days=back)
            start = end - timedelta(days=days)
            if held is None or not held[1] <= end < held[1] + timedelta(days=days):
                run = health.empty_day()
                self._add(run, start, end, 1)
            else:
                self._add(run, held[1], end, 1)
                self._add(run, held[0], start, -1)
            held = (start, end)
            yield start, end, run

    def _add(self, into: dict[str, Any], start: date, end: date, weight: int) -> None:
        for d in window_days(start, end):
            rec = self.day(d)
            if rec is not None:
                health.add_day(into, rec, weight)

    def sum_scores(self, start: date, end: date, row: str) -> float:
        """A label row's sum of scores over days ``[start, end)``: an ``fsum``, exactly
        rounded, so the same whichever windows were evaluated together."""
        return math.fsum(rec["labels"][row][health.SUM_SCORES] for d in window_days(start, end)
                         if (rec := self.day(d)) is not None and row in rec["labels"])


class HealthMonitor:
    """Day records in (:meth:`add`), the checks of the windows they touched out (:meth:`evaluate`)."""

    def __init__(self, table: MutableMapping[str, Any]) -> None:
        self.table = table
        # facility -> days whose histograms changed / whose labels changed, since the last evaluate
        self._psi_days: dict[str, set[date]] = {}
        self._equity_days: dict[str, set[date]] = {}
        self._where: dict[str, int] = {}  # facility -> the input partition its records came on
        # facility -> day -> its records summed (``_Totals``), as long as none of them changes
        self._totals: dict[str, dict[date, dict[str, Any] | None]] = {}

    def add(self, raw: bytes) -> None:
        """Keep one ``hospital.health-partials`` record (it replaces the one of its key)."""
        rec = parse_partial(raw)
        facility, partition, day = rec.pop("facility_id"), int(rec.pop("partition")), rec.pop("day")
        self._where[facility] = getattr(self.table, "partition", 0)  # a Staged table's, in the worker
        key = f"d|{facility}|{day}|{partition}"
        old = self.table.get(key) or {}
        if old == rec:
            return
        self.table[key] = rec
        meta = dict(self.table.get(f"f|{facility}") or {"first": day, "last": day, "partitions": []})
        meta["first"], meta["last"] = min(meta["first"], day), max(meta["last"], day)
        if partition not in meta["partitions"]:
            meta["partitions"] = sorted([*meta["partitions"], partition])
        self.table[f"f|{facility}"] = meta
        d = _day(day)
        self._totals.get(facility, {}).pop(d, None)
        if old.get("hist") != rec["hist"]:
            self._psi_days.setdefault(facility, set()).add(d)
        if old.get("labels") != rec["labels"] or old.get("n_index") != rec["n_index"]:
            self._equity_days.setdefault(facility, set()).add(d)

    def forget(self) -> None:
        """Drop what was touched but not evaluated, and the day totals (the batch is rolled
        back, or the partitions moved)."""
        self._psi_days.clear()
        self._equity_days.clear()
        self._totals.clear()

    def evaluate(self, scope: PartitionScope | None = None) -> list[ModelHealth]:
        """Every check of every window the records added since the last call touched.

        ``scope(partition)`` wraps the reads of a facility's records (a Faust table reads the
        store of the current event's partition: the worker sets an event of that partition).
        """
        out: list[ModelHealth] = []
        for facility in sorted(self._psi_days.keys() | self._equity_days.keys()):
            with scope(self._where[facility]) if scope else nullcontext():
                out.extend(self._facility(facility))
        self._psi_days.clear()
        self._equity_days.clear()
        return out

    def _facility(self, facility: str) -> list[ModelHealth]:
        meta = self.table.get(f"f|{facility}")
        if meta is None:
            return []
        first, last = _day(meta["first"]), _day(meta["last"])
        days = self._totals.setdefault(facility, {})
        for d in [d for d in days if d < last - timedelta(days=2 * EQUITY_SPAN)]:
            del days[d]  # far behind the windows a new record can touch (re-read if one does)
        totals = _Totals(self.table, facility, meta["partitions"], days)
        warm = first + timedelta(days=health.WARM_UP_DAYS)
        out: list[ModelHealth] = []
        ends = _ends(self._psi_days.get(facility, ()), PSI_SPAN, warm, last)
        earlier = totals.windows(ends, health.PSI_WINDOW_DAYS, back=health.PSI_WINDOW_DAYS)
        for (start, _, before), (_, end, after) in zip(earlier, totals.windows(ends, health.PSI_WINDOW_DAYS)):
            out.extend(self._psi(facility, start, end, before, after))
        for start, end, counts in totals.windows(_ends(self._equity_days.get(facility, ()), EQUITY_SPAN, warm, last),
                                                 EQUITY_SPAN):
            out.extend(self._equity(totals, facility, start, end, counts))
        return out

    @staticmethod
    def _psi(facility: str, start: date, end: date, earlier: dict[str, Any], later: dict[str, Any]
             ) -> list[ModelHealth]:
        counted = [sum(span["hist"]["score"]) for span in (earlier, later)]  # = the "n"s
        if min(counted) < health.PSI_MIN_N:
            return []
        w = health.Window(facility, start, end)
        return [health.psi_check(w, subject, earlier["hist"][subject], later["hist"][subject])
                for subject in health.psi_edges()]

    @staticmethod
    def _equity(totals: _Totals, facility: str, start: date, end: date, counts: dict[str, Any]
                ) -> list[ModelHealth]:
        labelled = counts["labels"].get(health.ALL, [0])[health.N]
        if counts["n_index"] == 0 or labelled < counts["n_index"]:
            return []  # labels still to come: recall and O/E would be biased
        figures = {name: [*row[:health.SUM_SCORES], totals.sum_scores(start, end, name)]
                   for name, row in counts["labels"].items()}
        return health.equity_checks(health.Window(facility, start, end), figures)


def _ends(days: Any, span: int, warm: date, last: date) -> list[date]:
    """The window ends (exclusive, a day) of windows of ``span`` days holding one of ``days``,
    starting on or after ``warm`` and ending by the day after the facility's last day."""
    ends: set[date] = set()
    latest = last + timedelta(days=1)
    for d in days:
        end = max(d + timedelta(days=1), warm + timedelta(days=span))
        stop = min(d + timedelta(days=span), latest)
        while end <= stop:
            ends.add(end)
            end += timedelta(days=1)
    return sorted(ends)


def messages(checks: list[ModelHealth]) -> list[tuple[str, bytes]]:
    """``(check_id, JSON)`` of each check, as sent on ``hospital.model-health``."""
    return [(c.check_id, dump(c)) for c in checks]
