"""Model quality and determinism of the domain, on simulated events through the real ADT flow.

No Kafka here: ``bench.bench_model.replay`` pushes the simulator's events through
``stream.adt_flow.AdtFlow`` over dicts, partitioned like Kafka, so the per-partition models are
exactly those of the worker. The full-year figures are in ``bench/bench_model.py``.
"""

from __future__ import annotations

import pytest

bench_model = pytest.importorskip("bench.bench_model")


def test_partition_models_beat_lace_after_warm_up() -> None:
    r = bench_model.replay(days=240, partitions=4)
    m = bench_model.evaluate(r, warmup_days=120)
    assert r.dlq == 0 and m["discharges_evaluated"] > 3000
    assert 0.10 < m["readmission_rate"] < 0.22
    assert m["auc_model"] >= m["auc_lace"] + 0.03, m
    # the simulator's truth also sees its hidden frailty: 0.95x is out of reach for any model of
    # the events (the exact observable part of the true logit scores ~0.92x); see the README
    assert m["auc_model"] >= 0.88 * m["auc_truth"], m
    assert m["calibration_gap"] < 0.05, m  # the prior correction keeps scores calibrated


def test_outputs_do_not_depend_on_partition_interleaving() -> None:
    a = bench_model.replay(days=45, partitions=4)
    b = bench_model.replay(days=45, partitions=4, by_partition=True)
    assert a.scores and a.label_records
    assert a.scores == b.scores
    assert sorted(a.label_records, key=lambda v: v["encounter_id"]) == sorted(
        b.label_records, key=lambda v: v["encounter_id"])
