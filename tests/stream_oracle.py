"""An independent oracle for the stream app's outputs, computed with pandas from the raw events.

It re-derives readmission labels and every KPI window from DESIGN.md's definitions without
importing ``stream.domain`` (only the contract models), so a shared bug cannot hide in both.
Also: helpers to produce a simulated period to Kafka and to read every output topic back.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone

import orjson
import pandas as pd
from kafka import TopicPartition

from stream.contracts import Topics
from wardstream.kafka_io import make_consumer

WINDOW_DAYS = {"1d": 1, "7d": 7, "30d": 30}
READMIT = timedelta(days=30)


# --------------------------------------------------------------------------- Kafka I/O


@dataclass
class Message:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


def read_all(topic: str, timeout_ms: int = 5000) -> list[Message]:
    """Every committed message of a topic, in per-partition order."""
    consumer = make_consumer(group_id=None)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        out: list[Message] = []
        idle = 0
        while any(consumer.position(tp) < ends[tp] for tp in tps) and idle < timeout_ms // 200:
            batch = consumer.poll(timeout_ms=200, max_records=5000)
            idle = 0 if batch else idle + 1
            for tp, records in batch.items():
                out.extend(Message(topic, tp.partition, r.offset, r.key, r.value) for r in records)
        return sorted(out, key=lambda m: (m.partition, m.offset))
    finally:
        consumer.close()


def last_by_key(messages: Iterable[Message]) -> dict[str, dict]:
    """What an upserting sink ends with: the last value per key."""
    out: dict[str, dict] = {}
    for m in messages:
        out[m.key.decode()] = orjson.loads(m.value)
    return out


@dataclass
class RunOutputs:
    adt: list[Message]
    scores: list[Message]
    labels: list[Message]
    alerts: list[Message]
    kpis: list[Message]
    dlq: list[Message]

    @classmethod
    def read(cls, ns: str) -> "RunOutputs":
        t = Topics(ns)
        return cls(read_all(t.adt), read_all(t.discharge_scores), read_all(t.readmission_labels),
                   read_all(t.alerts), read_all(t.kpis), read_all(t.dlq))

    def final(self) -> dict[str, dict[str, dict]]:
        return {name: last_by_key(getattr(self, name))
                for name in ("scores", "labels", "alerts", "kpis")}


# --------------------------------------------------------------------------- oracle


def _ts(s: str) -> datetime:
    return datetime.fromisoformat(s.replace("Z", "+00:00"))


@dataclass
class Oracle:
    """Expected labels and KPI values from the valid ADT events (with their partition)."""

    events: list[dict]  # valid events, each with "_partition"
    scores: dict[str, dict]  # encounter_id -> final score message (for high_risk)
    capacity: dict[str, int]
    labels: dict[str, dict] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.labels = self._labels()

    # ------------------------------------------------------------------ labels

    def _labels(self) -> dict[str, dict]:
        """DESIGN.md: index discharge readmitted if a non-elective admission follows within 30
        days (known then); false once event time on its ADT partition passes discharge + 30d."""
        last_time: dict[int, datetime] = {}
        admissions: dict[str, list[tuple[datetime, str, str]]] = {}
        for e in self.events:
            t = _ts(e["occurred_at"])
            p = e["_partition"]
            last_time[p] = max(last_time.get(p, t), t)
            if e["event_type"] == "admission":
                admissions.setdefault(e["patient_id"], []).append(
                    (t, e["encounter_id"], e["admission_type"]))
        out: dict[str, dict] = {}
        for e in self.events:
            if e["event_type"] != "discharge" or e["discharge_disposition"] == "expired":
                continue
            t = _ts(e["occurred_at"])
            hit = next(((a, enc) for a, enc, kind in sorted(admissions.get(e["patient_id"], []))
                        if kind != "elective" and t < a <= t + READMIT), None)
            if hit is not None:
                out[e["encounter_id"]] = {"readmitted": True, "readmission_encounter_id": hit[1],
                                          "known_at": hit[0], "discharged_at": t}
            elif t + READMIT < last_time[e["_partition"]]:
                out[e["encounter_id"]] = {"readmitted": False, "readmission_encounter_id": None,
                                          "known_at": t + READMIT, "discharged_at": t}
        return out

    # ------------------------------------------------------------------ KPI tables

    def frames(self) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
        """(admissions, discharges with score/label, census moves) with one row per dimension."""
        adm, dis, moves = [], [], []
        where: dict[str, tuple[str, str]] = {}
        for e in sorted(self.events, key=lambda e: (e["occurred_at"], e["_partition"])):
            t = _ts(e["occurred_at"])
            fac, dept, prov, pid = e["facility_id"], e["department"], e["attending_provider_id"], e["patient_id"]
            kind = e["event_type"]
            if kind == "admission":
                for dim, did in (("facility", fac), ("department", dept), ("provider", prov)):
                    adm.append({"dimension": dim, "dimension_id": did, "t": t})
                    moves.append({"dimension": dim, "dimension_id": did, "t": t, "delta": 1})
                where[pid] = (dept, prov)
            elif kind == "transfer":
                old_dept, old_prov = where[pid]
                for dim, old, new in (("department", old_dept, dept), ("provider", old_prov, prov)):
                    if old != new:
                        moves.append({"dimension": dim, "dimension_id": old, "t": t, "delta": -1})
                        moves.append({"dimension": dim, "dimension_id": new, "t": t, "delta": 1})
                where[pid] = (dept, prov)
            else:
                s = self.scores[e["encounter_id"]]
                lab = self.labels.get(e["encounter_id"])
                for dim, did in (("facility", fac), ("department", dept), ("provider", prov)):
                    dis.append({
                        "dimension": dim, "dimension_id": did, "t": t, "patient_id": pid,
                        "los": e["length_of_stay_days"], "cost": e["total_cost"],
                        "high_risk": bool(s["high_risk"]),
                        "known": lab is not None,
                        "readmitted": bool(lab and lab["readmitted"]),
                    })
                    moves.append({"dimension": dim, "dimension_id": did, "t": t, "delta": -1})
                where.pop(pid, None)
        return pd.DataFrame(adm), pd.DataFrame(dis), pd.DataFrame(moves)

    def expected(self, keys: Iterable[tuple[str, str, str, str, date]]) -> dict[tuple, tuple]:
        """(kpi, dimension, id, window, start) -> (value, numerator, denominator)."""
        adm, dis, moves = self.frames()
        groups_adm = {k: g.t for k, g in adm.groupby(["dimension", "dimension_id"])}
        groups_dis = {k: g for k, g in dis.groupby(["dimension", "dimension_id"])}
        groups_mov = {k: g.sort_values("t") for k, g in moves.groupby(["dimension", "dimension_id"])}
        out: dict[tuple, tuple] = {}
        for kpi, dim, did, window, start in keys:
            s = datetime(start.year, start.month, start.day, tzinfo=timezone.utc)
            e = s + timedelta(days=WINDOW_DAYS[window])
            a = groups_adm.get((dim, did), pd.Series(dtype="datetime64[ns, UTC]"))
            d = groups_dis.get((dim, did))
            d = d[(d.t >= s) & (d.t < e)] if d is not None else pd.DataFrame(
                columns=["los", "cost", "patient_id", "high_risk", "known", "readmitted"])
            m = groups_mov.get((dim, did))

            def census_at(t: datetime) -> float:
                return float(m[m.t < t].delta.sum()) if m is not None else 0.0

            def ratio(num: float, den: float, scale: float = 1.0) -> tuple:
                return (scale * num / den if den else None, float(num), float(den))

            known = d[d.known]
            if kpi == "admissions":
                n = float(((a >= s) & (a < e)).sum())
                out[(kpi, dim, did, window, start)] = (n, n, 1.0)
            elif kpi == "discharges":
                n = float(len(d))
                out[(kpi, dim, did, window, start)] = (n, n, 1.0)
            elif kpi == "avg_length_of_stay":
                out[(kpi, dim, did, window, start)] = ratio(d.los.sum(), len(d))
            elif kpi == "cost_per_patient":
                out[(kpi, dim, did, window, start)] = ratio(d.cost.sum(), d.patient_id.nunique())
            elif kpi == "high_risk_pct":
                out[(kpi, dim, did, window, start)] = ratio(d.high_risk.sum(), len(d), 100.0)
            elif kpi == "readmission_rate":
                out[(kpi, dim, did, window, start)] = ratio(known.readmitted.sum(), len(known))
            elif kpi == "outcome_efficiency":
                out[(kpi, dim, did, window, start)] = ratio(
                    (~known.readmitted).sum(), d.los.sum(), 100.0)
            elif kpi == "census":
                c = census_at(e)
                out[(kpi, dim, did, window, start)] = (c, c, 1.0)
            elif kpi == "provider_utilization":
                n = WINDOW_DAYS[window]
                total = sum(census_at(s + timedelta(days=i + 1)) for i in range(n))
                cap = self.capacity.get(did)
                out[(kpi, dim, did, window, start)] = ratio(total, cap * n if cap else 0.0)
            elif kpi == "model_recall":
                tp = (known.readmitted & known.high_risk).sum()
                out[(kpi, dim, did, window, start)] = ratio(tp, known.readmitted.sum())
            elif kpi == "model_precision":
                tp = (known.readmitted & known.high_risk).sum()
                out[(kpi, dim, did, window, start)] = ratio(tp, known.high_risk.sum())
        return out


def windows_holding(day: date) -> list[tuple[str, date]]:
    """(window, start) of every 1d/7d/30d window ending on a day boundary that holds ``day``."""
    return [(w, day + timedelta(days=k) - timedelta(days=n))
            for w, n in WINDOW_DAYS.items() for k in range(1, n + 1)]


def close(a: float | None, b: float | None, rel: float = 1e-6, abs_: float = 1e-4) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return abs(a - b) <= max(abs_, rel * max(abs(a), abs(b)))
