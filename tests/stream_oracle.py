"""An independent oracle for the stream app's outputs, computed with pandas from the raw events.

It re-derives readmission labels and every KPI window from DESIGN.md's definitions without
importing ``stream.domain`` (only the contract models), so a shared bug cannot hide in both.
Also: helpers to produce a simulated period to Kafka and to read every output topic back.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

import orjson
import pandas as pd
from kafka import TopicPartition

from contracts.events import KpiValue, Topics
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
    headers: list[tuple[str, bytes]] = field(default_factory=list)


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
                out.extend(Message(topic, tp.partition, r.offset, r.key, r.value, list(r.headers or ()))
                           for r in records)
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


def _last_times(events: list[dict]) -> dict[int, datetime]:
    """The latest event time of each ADT partition (what expires labels)."""
    out: dict[int, datetime] = {}
    for e in events:
        t = _ts(e["occurred_at"])
        out[e["_partition"]] = max(out.get(e["_partition"], t), t)
    return out


def as_applied(e: dict) -> dict:
    """A class change as what it acts as (README "HL7 v2 over MLLP"): an applied A06 is the
    stay's admission at the change, an A07 cancels the stay's admission (the visit was not an
    inpatient stay). The A06s the stream could not apply are not among the applied events."""
    if e["event_type"] != "class_change":
        return e
    if e["hl7_trigger"] == "A06":
        return {**e, "event_type": "admission"}
    return {**e, "event_type": "cancellation", "cancelled_event_type": "admission"}


def without_cancelled(events: list[dict]) -> list[dict]:
    """The events as if every cancelled one never happened (DESIGN.md "Withdrawals"), in order.

    A cancellation names the encounter's latest not yet cancelled event of a kind. A cancelled
    transfer goes; a cancelled admission takes every earlier event of its encounter with it
    (the stay never was); a cancelled discharge stays as a move to where it was sent from (the
    stay goes on there). Cancellations themselves add nothing.
    """
    kept: list[dict | None] = []
    for e in map(as_applied, events):
        if e["event_type"] != "cancellation":
            kept.append(e)
            continue
        enc, kind = e["encounter_id"], e["cancelled_event_type"]
        i = max(j for j, x in enumerate(kept) if x is not None and x["encounter_id"] == enc
                and x["event_type"] == kind)
        if kind == "transfer":
            kept[i] = None
        elif kind == "discharge":
            kept[i] = {**kept[i], "event_type": "update"}
        else:
            kept = [None if x is not None and x["encounter_id"] == enc else x for x in kept]
    return [e for e in kept if e is not None]


def _ts(s: str) -> datetime:
    return datetime.fromisoformat(s.replace("Z", "+00:00"))


@dataclass
class Oracle:
    """Expected labels and KPI values from the valid ADT events (with their partition)."""

    events: list[dict]  # applied events, each with "_partition" (registrations add nothing)
    scores: dict[str, dict]  # encounter_id -> final score message (for high_risk)
    capacity: dict[str, int]
    labels: dict[str, dict] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.last_time = _last_times(self.events)  # cancellations move event time too
        self.events = without_cancelled(self.events)
        self.labels = self._labels()

    # ------------------------------------------------------------------ labels

    def _labels(self) -> dict[str, dict]:
        """DESIGN.md: index discharge readmitted if a non-elective admission follows within 30
        days (known then); false once event time on its ADT partition passes discharge + 30d.
        A merge (A40) makes two MRNs one patient for the discharges still unlabelled then, and
        moves the prior's to the survivor's partition. (The stream finds the other side's stays
        among those its state keeps, the open and the last discharged one; the feeds tested
        have no more within 30 days of a discharge.)"""
        last_time = self.last_time
        admissions: dict[str, list[tuple[datetime, str, str]]] = {}
        for e in self.events:
            t = _ts(e["occurred_at"])
            if e["event_type"] == "admission":
                admissions.setdefault(e["patient_id"], []).append(
                    (t, e["encounter_id"], e["admission_type"]))
        # merges (A40): prior -> (survivor, when, the survivor's partition); the events of the
        # prior after it are not applied (dead-lettered), so they are not among the events
        merged = {e["prior_patient_id"]: (e["patient_id"], _ts(e["occurred_at"]), e["_partition"])
                  for e in self.events if e["event_type"] == "merge"}
        partners: dict[str, list[tuple[str, datetime]]] = {}
        for prior, (survivor, at, _) in merged.items():
            partners.setdefault(prior, []).append((survivor, at))
            partners.setdefault(survivor, []).append((prior, at))
        out: dict[str, dict] = {}
        for e in self.events:
            if e["event_type"] != "discharge" or e["discharge_disposition"] == "expired":
                continue
            t = _ts(e["occurred_at"])
            # one patient once merged, for a discharge whose label was not known by then
            same = [e["patient_id"], *(q for q, at in partners.get(e["patient_id"], ()) if at <= t + READMIT)]
            hit = next(((a, enc) for a, enc, kind in sorted(x for q in same for x in admissions.get(q, []))
                        if kind != "elective" and t < a <= t + READMIT), None)
            survivor = merged.get(e["patient_id"])
            partition = survivor[2] if survivor is not None and survivor[1] <= t + READMIT else e["_partition"]
            if hit is not None:
                out[e["encounter_id"]] = {"readmitted": True, "readmission_encounter_id": hit[1],
                                          "known_at": hit[0], "discharged_at": t}
            elif t + READMIT < last_time[partition]:
                out[e["encounter_id"]] = {"readmitted": False, "readmission_encounter_id": None,
                                          "known_at": t + READMIT, "discharged_at": t}
        return out

    # ------------------------------------------------------------------ KPI tables

    def frames(self) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
        """(admissions, discharges with score/label, census moves) with one row per dimension."""
        adm, dis, moves = [], [], []
        where: dict[str, tuple[str, str]] = {}  # encounter -> (department, attending) of its open stay
        for e in sorted(self.events, key=lambda e: (e["occurred_at"], e["_partition"])):
            t = _ts(e["occurred_at"])
            fac, dept, prov, pid = e["facility_id"], e["department"], e["attending_provider_id"], e["patient_id"]
            kind, enc = e["event_type"], e["encounter_id"]  # a merged stay goes on under the survivor
            if kind == "admission":
                for dim, did in (("facility", fac), ("department", dept), ("provider", prov)):
                    adm.append({"dimension": dim, "dimension_id": did, "t": t})
                    moves.append({"dimension": dim, "dimension_id": did, "t": t, "delta": 1})
                where[enc] = (dept, prov)
            elif kind in ("transfer", "update", "discharge"):
                # an update (A08) moves the stay like a transfer; a discharge from elsewhere
                # than the stay was known to be moves it there first
                old_dept, old_prov = where[enc]
                for dim, old, new in (("department", old_dept, dept), ("provider", old_prov, prov)):
                    if old != new:
                        moves.append({"dimension": dim, "dimension_id": old, "t": t, "delta": -1})
                        moves.append({"dimension": dim, "dimension_id": new, "t": t, "delta": 1})
                where[enc] = (dept, prov)
            if kind == "discharge":
                s = self.scores[e["encounter_id"]]
                lab = self.labels.get(e["encounter_id"])
                for dim, did in (("facility", fac), ("department", dept), ("provider", prov)):
                    dis.append({
                        "dimension": dim, "dimension_id": did, "t": t, "patient_id": pid,
                        "los": e["length_of_stay_days"], "cost": e.get("total_cost"),
                        "high_risk": bool(s["high_risk"]),
                        "known": lab is not None,
                        "readmitted": bool(lab and lab["readmitted"]),
                    })
                    moves.append({"dimension": dim, "dimension_id": did, "t": t, "delta": -1})
                where.pop(enc, None)
        return pd.DataFrame(adm), pd.DataFrame(dis), pd.DataFrame(moves)

    def expected(self, keys: Iterable[tuple[str, str, str, str, date]]) -> dict[tuple, tuple]:
        """(kpi, dimension, id, window, start) -> (value, numerator, denominator).

        Per dimension: daily sums with pandas, then each window from cumulative sums (distinct
        patients from the union of the days' sets).
        """
        adm, dis, moves = self.frames()
        for df in (adm, dis, moves):
            df["day"] = df.t.dt.date
        dis["known_good"] = dis.known & ~dis.readmitted
        dis["known_readmitted"] = dis.known & dis.readmitted
        dis["tp"] = dis.known_readmitted & dis.high_risk
        dis["known_flagged"] = dis.known & dis.high_risk
        daily = {
            "admissions": adm.groupby(["dimension", "dimension_id", "day"]).size(),
            "discharges": dis.groupby(["dimension", "dimension_id", "day"]).size(),
            "census_delta": moves.groupby(["dimension", "dimension_id", "day"]).delta.sum(),
        }
        g = dis.groupby(["dimension", "dimension_id", "day"])
        for col, src in (("los", "los"), ("cost", "cost"), ("high_risk", "high_risk"),
                         ("known", "known"), ("readmitted", "known_readmitted"),
                         ("good", "known_good"), ("tp", "tp"), ("flagged", "known_flagged")):
            daily[col] = g[src].sum()
        # cost per patient: discharges with a known cost (contract v1.1: total_cost may be null)
        costed = dis[dis.cost.notna()]
        patients = costed.groupby(["dimension", "dimension_id", "day"]).patient_id.agg(
            lambda s: frozenset(s)).to_dict()
        first_day = min(adm.day.min(), dis.day.min())
        out: dict[tuple, tuple] = {}
        cache: dict[tuple[str, str], dict[str, list[float]]] = {}

        def cum(dim: str, did: str) -> dict[str, list[float]]:
            if (dim, did) not in cache:
                n = 800
                sums = {}
                for col, series in daily.items():
                    arr = [0.0] * (n + 1)
                    try:
                        sub = series.loc[(dim, did)]
                    except KeyError:
                        sub = {}
                    for day, v in dict(sub).items():
                        arr[(day - first_day).days + 1] += float(v)
                    for i in range(1, n + 1):
                        arr[i] += arr[i - 1]
                    sums[col] = arr
                census = sums["census_delta"]  # census at end of day i = census[i + 1]
                # cumulative of day-end census, for utilization
                cc = [0.0] * (n + 1)
                for i in range(1, n + 1):
                    cc[i] = cc[i - 1] + census[i]
                sums["census_cum"] = cc
                cache[(dim, did)] = sums
            return cache[(dim, did)]

        def ratio(num: float, den: float, scale: float = 1.0) -> tuple:
            return (scale * num / den if den else None, float(num), float(den))

        for key in keys:
            kpi, dim, did, window, start = key
            c = cum(dim, did)
            i0 = (start - first_day).days
            i1 = i0 + WINDOW_DAYS[window]  # window days are i0 .. i1-1

            def tot(col: str) -> float:
                arr = c[col]
                lo, hi = max(0, i0), max(0, min(i1, len(arr) - 1))
                return arr[hi] - arr[lo] if hi > lo else 0.0

            if kpi == "admissions":
                out[key] = (tot("admissions"), tot("admissions"), 1.0)
            elif kpi == "discharges":
                out[key] = (tot("discharges"), tot("discharges"), 1.0)
            elif kpi == "avg_length_of_stay":
                out[key] = ratio(tot("los"), tot("discharges"))
            elif kpi == "cost_per_patient":
                who: set[str] = set()
                for i in range(WINDOW_DAYS[window]):
                    who |= patients.get((dim, did, start + timedelta(days=i)), frozenset())
                out[key] = ratio(tot("cost"), len(who))
            elif kpi == "high_risk_pct":
                out[key] = ratio(tot("high_risk"), tot("discharges"), 100.0)
            elif kpi == "readmission_rate":
                out[key] = ratio(tot("readmitted"), tot("known"))
            elif kpi == "outcome_efficiency":
                out[key] = ratio(tot("good"), tot("los"), 100.0)
            elif kpi == "census":
                arr = c["census_delta"]
                v = arr[max(0, min(i1, len(arr) - 1))]
                out[key] = (v, v, 1.0)
            elif kpi == "provider_utilization":
                arr = c["census_delta"]
                total = sum(arr[max(0, min(i + 1, len(arr) - 1))] for i in range(i0, i1))
                cap = self.capacity.get(did)
                n = WINDOW_DAYS[window]
                out[key] = ratio(total, cap * n if cap else 0.0)
            elif kpi == "model_recall":
                out[key] = ratio(tot("tp"), tot("readmitted"))
            elif kpi == "model_precision":
                out[key] = ratio(tot("tp"), tot("flagged"))
        return out


def windows_holding(day: date) -> list[tuple[str, date]]:
    """(window, start) of every 1d/7d/30d window ending on a day boundary that holds ``day``."""
    return [(w, day + timedelta(days=k) - timedelta(days=n))
            for w, n in WINDOW_DAYS.items() for k in range(1, n + 1)]


def close(a: float | None, b: float | None, rel: float = 1e-6, abs_: float = 1e-4) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return abs(a - b) <= max(abs_, rel * max(abs(a), abs(b)))


def differing_windows(flushed: Iterable[tuple[str, bytes]], oracle: "Oracle") -> tuple[list[tuple], dict]:
    """The KPI windows (from a combiner's flush) whose value, numerator or denominator differ
    from the oracle's, and the oracle's expected values."""
    msgs = {k: KpiValue.model_validate_json(v) for k, v in flushed}
    key_of = {(v.kpi, v.dimension, v.dimension_id, v.window, v.window_start.date()): k for k, v in msgs.items()}
    want = oracle.expected(key_of)
    bad = [(k, msgs[key_of[k]], w) for k, w in want.items()
           if not all(close(a, b) for a, b in zip((msgs[key_of[k]].value, msgs[key_of[k]].numerator,
                                                    msgs[key_of[k]].denominator), w))]
    return bad, want
