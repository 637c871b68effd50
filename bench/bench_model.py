"""Readmission model quality on a simulated year, replayed offline through the real ADT flow.

The simulator's events go through ``stream.adt_flow.AdtFlow`` over plain dicts (the same code the
Faust worker runs over its tables), partitioned like Kafka does (murmur2 of the patient id), so
the figures are those of the stream's per-partition models. Measured on the discharges after the
warm-up whose label the stream emitted:

* ``auc_model`` (scores predicted before the label was known), ``auc_truth`` (the simulator's true
  probability, which also knows the hidden frailty), ``auc_lace``;
* the targets: ``auc_model >= 0.95 x auc_truth`` and ``auc_model >= auc_lace + 0.03``;
  observed / expected (readmissions / sum of scores) within 0.9-1.1;
* the alert budget (stream/domain/policy.py): the share flagged (overall and per facility-month,
  over every scored discharge, as the ``high_risk_pct`` KPI counts), PPV, NNE (1 / PPV) and
  recall of the alerts, beside LACE's and the true probability's PPV / recall when they flag the
  same share (top of their ranking after the fact; ties broken at random, in expectation);
* the calibration gap;
* the same with one global model (``partitions = 1``): the AUC cost of one model per partition.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Any

import orjson

import numpy as np
from sklearn.metrics import precision_score, recall_score, roc_auc_score, roc_curve

from producers.simulator import SimConfig, Simulation
from stream.adt_flow import AdtFlow
from stream.domain import model as model_mod
from stream.domain.metrics import calibration
from wardstream.kafka_io import key_partition


@dataclass
class Replay:
    scores: dict[str, dict] = field(default_factory=dict)
    labels: dict[str, bool] = field(default_factory=dict)
    label_records: list[dict] = field(default_factory=list)  # in emission order
    partition: dict[str, int] = field(default_factory=dict)  # encounter -> partition
    truth: dict[str, float] = field(default_factory=dict)
    dlq: int = 0
    events: int = 0


def replay(days: int = 365, partitions: int = 4, seed: int = 42, by_partition: bool = False,
           **model_kw: float) -> Replay:
    """Simulate ``days`` and push every event through the ADT flow; collect scores and labels.

    ``by_partition`` feeds partition 0 entirely, then 1, ... instead of interleaving by time (a
    worker that owned the partitions one after another): outputs must not change.
    """
    saved = {k: getattr(model_mod, k) for k in ("LEARNING_RATE", "WEIGHT_POS", "L2", "INTERCEPT_LR")}
    for k, v in model_kw.items():
        setattr(model_mod, k.upper(), v)
    model_mod.OnlineRiskModel.__init__.__defaults__ = (  # type: ignore[attr-defined]
        model_mod.LEARNING_RATE, model_mod.WEIGHT_POS, model_mod.L2, model_mod.INTERCEPT_LR)
    try:
        sim = Simulation(SimConfig(seed=seed, days=days))
        flow = AdtFlow(source_topic="hospital.adt", patients={}, partitions={}, due={}, models={})
        offsets = [0] * partitions
        out = Replay()
        items = list(sim.stream())
        if by_partition:
            items.sort(key=lambda it: key_partition(it.key, partitions))  # stable: time order kept
        for item in items:
            p = key_partition(item.key, partitions)
            for o in flow.process(orjson.dumps(item.event), p, offsets[p], item.key.encode()):
                if o.topic == "discharge_scores":
                    v = orjson.loads(o.value)
                    out.scores[v["encounter_id"]] = v
                    out.partition[v["encounter_id"]] = p
                elif o.topic == "readmission_labels":
                    v = orjson.loads(o.value)
                    out.labels[v["encounter_id"]] = v["readmitted"]
                    out.label_records.append(v)
                elif o.topic == "dlq":
                    out.dlq += 1
            offsets[p] += 1
            out.events += 1
        out.truth = {r["encounter_id"]: r["p_readmit"] for r in sim.truth_records()}
        return out
    finally:
        for k, v in saved.items():
            setattr(model_mod, k, v)
        model_mod.OnlineRiskModel.__init__.__defaults__ = tuple(saved.values())  # type: ignore[attr-defined]


def tp_at_share(values: list[float], y: list[bool], share: float) -> float:
    """Expected true positives among the top ``share`` of ``values`` (ties broken at random).

    From scikit-learn's ROC curve at every distinct threshold: (flagged, tp) is piecewise
    linear in expectation inside a tie group, so it is interpolated there.
    """
    fpr, tpr, _ = roc_curve(y, values, drop_intermediate=False)
    pos = float(sum(y))
    flagged = tpr * pos + fpr * (len(y) - pos)
    return float(np.interp(share * len(y), flagged, tpr * pos))


def facility_month_shares(r: Replay, cut: datetime) -> dict[str, float]:
    """Share flagged per ``facility|YYYY-MM``, over every scored discharge from ``cut`` on."""
    counts: dict[str, list[int]] = {}
    for s in r.scores.values():
        if datetime.fromisoformat(s["discharged_at"]) >= cut:
            c = counts.setdefault(f"{s['facility_id']}|{s['discharged_at'][:7]}", [0, 0])
            c[0] += bool(s["high_risk"])
            c[1] += 1
    return {k: f / n for k, (f, n) in sorted(counts.items())}


def evaluate(r: Replay, warmup_days: int = 90, start: date = date(2025, 1, 1)) -> dict[str, Any]:
    cut = datetime(start.year, start.month, start.day, tzinfo=timezone.utc) + timedelta(days=warmup_days)
    ids = [e for e, s in r.scores.items()
           if e in r.labels and datetime.fromisoformat(s["discharged_at"]) >= cut]
    y = [r.labels[e] for e in ids]
    score = [r.scores[e]["score"] for e in ids]
    lace = [float(r.scores[e]["lace"]) for e in ids]
    truth = [r.truth[e] for e in ids]
    flags = [r.scores[e]["high_risk"] for e in ids]
    share = sum(flags) / len(flags)
    n_flagged, positives = share * len(y), sum(y)
    ppv = float(precision_score(y, flags))
    tp_lace, tp_truth = tp_at_share(lace, y, share), tp_at_share(truth, y, share)
    months = facility_month_shares(r, cut)
    cal = calibration(score, y, bins=10)
    n = sum(c for _, _, c in cal)
    return {
        "events": r.events,
        "dlq": r.dlq,
        "discharges_evaluated": len(ids),
        "readmission_rate": positives / len(y),
        "auc_model": float(roc_auc_score(y, score)),
        "auc_truth": float(roc_auc_score(y, truth)),
        "auc_lace": float(roc_auc_score(y, lace)),
        "observed_to_expected": positives / sum(score),
        "alert_share": share,
        "alert_share_min_month": min(months.values()),
        "alert_share_max_month": max(months.values()),
        "alert_share_by_month": months,
        "policy_budget_pct": 100 * sum(r.scores[e]["policy"] == "budget" for e in ids) / len(ids),
        "alert_ppv": ppv,
        "alert_nne": 1 / ppv if ppv else float("inf"),
        "alert_recall": float(recall_score(y, flags)),
        "lace_ppv": tp_lace / n_flagged,
        "lace_recall": tp_lace / positives,
        "truth_ppv": tp_truth / n_flagged,
        "truth_recall": tp_truth / positives,
        "mean_score": sum(score) / len(score),
        "calibration_gap": sum(abs(m - o) * c for m, o, c in cal) / n,  # expected calibration error
    }


def run(quick: bool = False) -> dict:
    days = 120 if quick else 365
    warm = 45 if quick else 90
    res = evaluate(replay(days=days, partitions=4), warm)
    one = evaluate(replay(days=days, partitions=1), warm)
    figures = {f"p4_{k}": v for k, v in res.items() if k != "alert_share_by_month"}
    figures["p1_auc_model"] = one["auc_model"]
    figures["auc_cost_of_4_partitions"] = one["auc_model"] - res["auc_model"]
    figures["ratio_model_to_truth"] = res["auc_model"] / res["auc_truth"]
    figures["model_minus_lace"] = res["auc_model"] - res["auc_lace"]
    return figures


if __name__ == "__main__":
    print(json.dumps(run(quick=False), indent=2))
