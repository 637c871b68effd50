"""Model quality and determinism of the domain, on simulated events through the real ADT flow.

No Kafka here: ``bench.bench_model.replay`` pushes the simulator's events through
``stream.adt_flow.AdtFlow`` over dicts, partitioned like Kafka, so the per-partition models are
exactly those of the worker. The full-year figures are in ``bench/bench_model.py``.
"""

from __future__ import annotations

import pytest

bench_model = pytest.importorskip("bench.bench_model")


def test_partition_models_meet_the_quality_bars_over_a_year() -> None:
    """Issue 3's bars, after a 90-day warm-up of a default-seed simulated year (4 partitions).

    The simulator's truth also sees its hidden frailty, which no model of the events can; the
    frailty weight (producers/rules.py) leaves the observable part enough signal for 0.95x.
    """
    r = bench_model.replay(days=365, partitions=4)
    m = bench_model.evaluate(r, warmup_days=90)
    print(m)
    assert r.dlq == 0 and m["discharges_evaluated"] > 10000
    assert 0.12 < m["readmission_rate"] < 0.18
    assert m["auc_model"] >= 0.95 * m["auc_truth"], m
    assert m["auc_model"] >= m["auc_lace"] + 0.03, m
    assert m["alert_recall"] >= 0.80, m
    assert m["calibration_gap"] < 0.05, m  # the prior correction keeps scores calibrated


def test_outputs_do_not_depend_on_partition_interleaving() -> None:
    a = bench_model.replay(days=45, partitions=4)
    b = bench_model.replay(days=45, partitions=4, by_partition=True)
    assert a.scores and a.label_records
    assert a.scores == b.scores
    assert sorted(a.label_records, key=lambda v: v["encounter_id"]) == sorted(
        b.label_records, key=lambda v: v["encounter_id"])
