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

from collections.abc import MutableMapping
from contextlib import nullcontext
from datetime import date, timedelta
from typing import Any

from contracts.events import ModelHealth, dump
from stream.domain import health
from stream.health_tally import parse_partial
from stream.staged import PartitionScope

PSI_SPAN = 2 * health.PSI_WINDOW_DAYS
EQUITY_SPAN = health.EQUITY_WINDOW_DAYS


def _day(value: str) -> date:
    return date.fromisoformat(value)


class _Totals:
    """A facility's records summed over the ADT partitions, per day (read once per evaluation)."""

    def __init__(self, table: MutableMapping[str, Any], facility_id: str, partitions: list[int]) -> None:
        self.table, self.facility_id, self.partitions = table, facility_id, partitions
        self._days: dict[date, dict[str, Any] | None] = {}

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

    def span(self, start: date, end: date) -> dict[str, Any]:
        """The records of days ``[start, end)`` added up."""
        out = health.empty_day()
        d = start
        while d < end:
            rec = self.day(d)
            if rec is not None:
                health.add_day(out, rec)
            d += timedelta(days=1)
        return out


class HealthMonitor:
    """Day records in (:meth:`add`), the checks of the windows they touched out (:meth:`evaluate`)."""

    def __init__(self, table: MutableMapping[str, Any]) -> None:
        self.table = table
        # facility -> days whose histograms changed / whose labels changed, since the last evaluate
        self._psi_days: dict[str, set[date]] = {}
        self._equity_days: dict[str, set[date]] = {}
        self._where: dict[str, int] = {}  # facility -> the input partition its records came on

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
        if old.get("hist") != rec["hist"]:
            self._psi_days.setdefault(facility, set()).add(d)
        if old.get("labels") != rec["labels"] or old.get("n_index") != rec["n_index"]:
            self._equity_days.setdefault(facility, set()).add(d)

    def forget(self) -> None:
        """Drop what was touched but not evaluated (the batch is rolled back)."""
        self._psi_days.clear()
        self._equity_days.clear()

    def evaluate(self, scope: PartitionScope | None = None) -> list[ModelHealth]:
        """Every check of every window the records added since the last call touched.

        ``scope(partition)`` wraps the reads of a facility's records (a Faust table reads the
        store of the current event's partition: the worker sets an event of that partition).
        """
        out: list[ModelHealth] = []
        for facility in sorted(self._psi_days.keys() | self._equity_days.keys()):
            with scope(self._where[facility]) if scope else nullcontext():
                out.extend(self._facility(facility))
        self.forget()
        return out

    def _facility(self, facility: str) -> list[ModelHealth]:
        meta = self.table.get(f"f|{facility}")
        if meta is None:
            return []
        totals = _Totals(self.table, facility, meta["partitions"])
        first, last = _day(meta["first"]), _day(meta["last"])
        warm = first + timedelta(days=health.WARM_UP_DAYS)
        out: list[ModelHealth] = []
        for end in _ends(self._psi_days.get(facility, ()), PSI_SPAN, warm, last):
            out.extend(self._psi(totals, facility, end))
        for end in _ends(self._equity_days.get(facility, ()), EQUITY_SPAN, warm, last):
            out.extend(self._equity(totals, facility, end))
        return out

    @staticmethod
    def _psi(totals: _Totals, facility: str, end: date) -> list[ModelHealth]:
        mid = end - timedelta(days=health.PSI_WINDOW_DAYS)
        start = mid - timedelta(days=health.PSI_WINDOW_DAYS)
        earlier, later = totals.span(start, mid), totals.span(mid, end)
        counted = [sum(span["hist"]["score"]) for span in (earlier, later)]  # = the "n"s
        if min(counted) < health.PSI_MIN_N:
            return []
        w = health.Window(facility, start, end)
        return [health.psi_check(w, subject, earlier["hist"][subject], later["hist"][subject])
                for subject in health.psi_edges()]

    @staticmethod
    def _equity(totals: _Totals, facility: str, end: date) -> list[ModelHealth]:
        start = end - timedelta(days=EQUITY_SPAN)
        span = totals.span(start, end)
        labelled = span["labels"].get(health.ALL, [0])[health.N]
        if span["n_index"] == 0 or labelled < span["n_index"]:
            return []  # labels still to come: recall and O/E would be biased
        return health.equity_checks(health.Window(facility, start, end), span["labels"])


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
