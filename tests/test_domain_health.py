"""Model health: PSI, subgroup figures, the error detector, the ADT flow's day records and the
monitor over plain dicts; and on simulated years, that a stationary year raises no PSI warning
after its first 90 days while a drift scenario raises one within 14 days."""

from __future__ import annotations

import json
import math
import random
from datetime import date, datetime, timedelta, timezone

import orjson
import pytest

from producers.simulator import SimConfig
from stream.adt_flow import HEALTH_PARTIALS, MODEL_HEALTH, AdtFlow
from contracts.events import ModelHealth
from stream.domain import health
from stream.health_monitor import HealthMonitor
from flow_inputs import flow_tables, partitioned_messages

T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)


# --------------------------------------------------------------------------- pure math


def test_psi_is_zero_for_equal_shares_and_grows_with_the_move() -> None:
    assert health.psi([10, 20, 70], [100, 200, 700]) == pytest.approx(0.0)
    small, large = health.psi([50, 50], [45, 55]), health.psi([50, 50], [20, 80])
    assert 0 < small < health.PSI_WATCH < health.PSI_ACT < large


def test_psi_counts_an_empty_bin_as_epsilon() -> None:
    value = health.psi([100, 0], [99, 1])
    e, a = health.PSI_EPSILON, 0.01
    assert value == pytest.approx((0.99 - 1.0) * math.log(0.99) + (a - e) * math.log(a / e))


def test_histograms_use_the_fixed_edges() -> None:
    hist = health.empty_histograms()
    x = {"age": 82.0, "charlson": 0.0, "los_log1p": 0.5, "ed_visits_6m": 7.0,
         "prior_admissions_12m": 1.0, "n_chronic": 3.0}
    health.add_to_histograms(hist, 0.12, x)
    assert hist["score"][1] == 1  # [0.10, 0.15)
    assert hist["age"][8] == 1  # [80, 85)
    assert hist["charlson"][0] == 1 and hist["ed_visits_6m"][-1] == 1
    assert sum(sum(v) for v in hist.values()) == len(health.psi_edges())


def _figures(rows: list[tuple[dict[str, str], bool, bool, float]]) -> dict[str, list[float]]:
    f: dict[str, list[float]] = {}
    for groups, readmitted, flagged, score in rows:
        health.add_label(f, groups, readmitted=readmitted, flagged=flagged, score=score)
    return f


def test_equity_flags_a_subgroup_whose_recall_or_calibration_is_off() -> None:
    rows = []
    # F: 200 readmitted, 100 flagged (recall 0.5); M: 200 readmitted, 160 flagged (recall 0.8)
    for i in range(200):
        rows.append(({"sex": "F"}, True, i < 100, 0.5))
        rows.append(({"sex": "M"}, True, i < 160, 0.5))
    for i in range(600):  # not readmitted: F's scores sum to the O/E of ~1, M's are too low
        rows.append(({"sex": "F"}, False, False, 0.0))
        rows.append(({"sex": "M"}, False, False, 0.0))
    rows.append(({"sex": "X"}, True, True, 0.5))  # one readmission: never evaluated
    checks = health.equity_checks(health.Window("F01", date(2025, 1, 1), date(2025, 4, 1)),
                                  _figures(rows))
    by = {(c.check, c.subject): c for c in checks}
    assert set(by) == {(k, f"sex={s}") for k in ("equity_recall", "equity_oe") for s in "FM"}
    facility = 261 / 401  # X counts for the facility
    assert by["equity_recall", "sex=F"].value == pytest.approx(0.5 - facility, abs=1e-6)
    assert by["equity_recall", "sex=F"].level == "act"  # 0.148 below the facility
    assert by["equity_recall", "sex=M"].level == "act"  # 0.152 above
    assert by["equity_recall", "sex=M"].baseline == pytest.approx(facility, abs=1e-6)
    # observed / expected: 200 readmitted / (200 * 0.5) = 2.0 for both: outside 0.8-1.25
    assert by["equity_oe", "sex=F"].value == pytest.approx(2.0)
    assert by["equity_oe", "sex=F"].level == "act"
    assert all(c.check_id.endswith("|2025-04-01") and c.facility_id == "F01" for c in checks)


def test_equity_ok_inside_the_band() -> None:
    rows = [({"age": "80+"}, i < 100, i % 2 == 0, 0.1) for i in range(1000)]
    checks = health.equity_checks(health.Window("F01", date(2025, 1, 1), date(2025, 4, 1)),
                                  _figures(rows))
    assert [(c.check, c.level) for c in checks] == [("equity_recall", "ok"), ("equity_oe", "ok")]
    assert checks[1].value == pytest.approx(1.0)


def test_error_detector_ignores_a_falling_error_and_warns_when_it_rises() -> None:
    d = health.ErrorDrift.new(T0)
    rng = random.Random(3)
    fired = []
    for i in range(3000):  # learning: the error falls from ~0.3 to ~0.1
        level = 0.3 - 0.2 * min(i, 1500) / 1500
        fired.append(d.update(rng.random() * 2 * level, T0 + timedelta(hours=i)))
    assert not any(fired)
    restored = health.ErrorDrift.from_dict(json.loads(json.dumps(d.to_dict())))
    rise = [rng.random() * 0.6 for _ in range(1000)]  # mean 0.1 -> 0.3
    at = T0 + timedelta(days=200)
    a = [d.update(e, at) for e in rise]
    b = [restored.update(e, at) for e in rise]
    assert a == b  # the stored detector continues exactly
    first = next(f for f in a if f)
    recent, earlier, n = first
    assert recent > earlier and n >= 3000


def test_error_drift_message() -> None:
    m = health.error_drift_check("F01", 2, since=T0, at=T0 + timedelta(days=40), recent=0.16,
                                 earlier=0.11, n=900)
    assert (m.check, m.subject, m.level) == ("error_drift", "partition 2", "act")
    assert m.check_id == "error_drift|F01|partition 2|2025-02-10"
    assert m.value == pytest.approx(0.05) and m.baseline == pytest.approx(0.11)


# --------------------------------------------------------------------------- the monitor


def _partial(day: date, partition: int, hist: dict[str, list[int]] | None = None, *, n: int = 0,
             n_index: int = 0, labels: dict | None = None, facility: str = "F01") -> bytes:
    return orjson.dumps({"facility_id": facility, "partition": partition, "day": day.isoformat(),
                         "n": n, "n_index": n_index, "hist": hist or health.empty_histograms(),
                         "labels": labels or {}})


def _day_hist(rng: random.Random, k: int, old_share: float) -> dict[str, list[int]]:
    """k discharges: ages 40-60 with probability old_share, else 80-90."""
    h = health.empty_histograms()
    for _ in range(k):
        x = {"age": 50.0 if rng.random() < old_share else 86.0}
        health.add_to_histograms(h, 0.2, x)
    return h


def _run_monitor(batches: list[list[bytes]]) -> dict[str, ModelHealth]:
    mon = HealthMonitor({})
    last: dict[str, ModelHealth] = {}
    for batch in batches:
        for raw in batch:
            mon.add(raw)
        for c in mon.evaluate():
            last[c.check_id] = c
    return last


def _shifted_days() -> list[bytes]:
    """200 days, two ADT partitions, 20 discharges a day each: the age mix changes on day 160."""
    rng = random.Random(5)
    out = []
    for i in range(200):
        day = date(2025, 1, 1) + timedelta(days=i)
        for p in (0, 1):
            out.append(_partial(day, p, _day_hist(rng, 20, 0.8 if i < 160 else 0.4), n=20))
    return out


def test_monitor_warns_on_a_shift_and_not_before() -> None:
    last = _run_monitor([[raw] for raw in _shifted_days()])
    age = {c.window_end.date(): c for c in last.values() if c.subject == "age"}
    shift = date(2025, 1, 1) + timedelta(days=160)
    warm = date(2025, 1, 1) + timedelta(days=health.WARM_UP_DAYS + 56)
    assert min(age) == warm  # the first window starts after the 90 days
    assert all(c.level == "ok" for d, c in age.items() if d <= shift)
    assert age[shift + timedelta(days=14)].level in ("watch", "act")
    c = age[shift + timedelta(days=28)]
    assert c.level == "act" and c.n == 28 * 40 and "largest move: age 50-60 7" in c.message
    assert all(c.value < health.PSI_WATCH for c in last.values() if c.subject == "score")
    assert all(c.check in ("psi_score", "psi_feature") for c in last.values())


def test_monitor_needs_500_discharges_per_window() -> None:
    rng = random.Random(1)
    raws = [_partial(date(2025, 1, 1) + timedelta(days=i), 0, _day_hist(rng, 17, 0.5), n=17)
            for i in range(200)]  # 476 per 28 days
    assert _run_monitor([raws]) == {}


def test_monitor_result_does_not_depend_on_batches_or_re_sends() -> None:
    raws = _shifted_days()
    one = _run_monitor([raws])
    rng = random.Random(9)
    batches, i = [], 0
    while i < len(raws):
        k = rng.randint(1, 40)
        batches.append(raws[i:i + k] + raws[max(0, i - 5):i])  # re-sent records replace themselves
        i += k
    assert _run_monitor(batches) == one
    assert _run_monitor([[raw] for raw in raws]) == one


def _labelled_days(rng: random.Random, days: int = 260) -> list[bytes]:
    """Two ADT partitions, 20 labelled index discharges a day each, scores that do not add up
    exactly in floating point, and some subgroups readmitted more often than scored."""
    out = []
    for i in range(days):
        for p in (0, 1):
            rows = [({"sex": rng.choice("FM"), "payer": rng.choice(["medicare", "private"])},
                     rng.random() < 0.2, rng.random() < 0.1, rng.choice([0.1, 0.2, 0.7, 1 / 3]))
                    for _ in range(20)]
            out.append(_partial(date(2025, 1, 1) + timedelta(days=i), p, n=20, n_index=20,
                                labels=_figures(rows)))
    return out


def test_equity_checks_do_not_depend_on_batches_re_sends_or_corrections() -> None:
    """The monitor carries a window's counts to the next and keeps day totals between batches;
    what it sends last per window is what one pass over the final records gives, to the bit."""
    rng = random.Random(3)
    final = _labelled_days(rng)
    one = _run_monitor([final])
    assert len({c.window_end for c in one.values()}) > 50 and {c.check for c in one.values()} == {
        "equity_recall", "equity_oe"}
    first = _labelled_days(random.Random(4))  # what was sent before the corrections
    batches, i, before = [], 0, 0
    while i < len(final):
        k = rng.randint(1, 60)
        batches.append(first[i:i + k] + final[before:i])  # each batch corrects the one before
        before, i = i, i + k
    batches.append(final[before:])
    assert _run_monitor(batches) == one


def test_monitor_waits_for_every_label_of_an_equity_window() -> None:
    start = date(2025, 1, 1)
    labels = _figures([({"sex": "F"}, i % 5 == 0, i % 10 == 0, 0.2) for i in range(20)])
    mon = HealthMonitor({})
    for i in range(300):
        day = start + timedelta(days=i)
        # the last day's labels are not all known yet: 20 index discharges, 19 labelled
        lab = _figures([({"sex": "F"}, j % 5 == 0, j % 10 == 0, 0.2) for j in range(19)]) \
            if i == 299 else labels
        mon.add(_partial(day, 0, n=20, n_index=20, labels=lab))
    checks = mon.evaluate()
    ends = sorted({c.window_end.date() for c in checks})
    assert ends[0] == start + timedelta(days=health.WARM_UP_DAYS + 90)
    assert ends[-1] == start + timedelta(days=299)  # the window holding day 299 waits
    by = {(c.check, c.window_end.date()): c for c in checks}
    oe = by["equity_oe", ends[-1]]
    assert oe.subject == "sex=F" and oe.value == pytest.approx(1.0) and oe.level == "ok"
    recall = by["equity_recall", ends[-1]]
    assert recall.value == pytest.approx(0.0) and recall.baseline == pytest.approx(0.5)


# --------------------------------------------------------------------------- the ADT flow's records


_messages = partitioned_messages
_tables = flow_tables


def _batches(flow: AdtFlow, msgs, size: int, monitor: HealthMonitor | None = None):
    """Process like the worker: a batch staged, its outputs and health records, then commit."""
    outputs, partials = [], []
    for i in range(0, len(msgs), size):
        for p, off, key, raw in msgs[i:i + size]:
            outputs.extend(flow.process(raw, p, off, key=key, commit=False))
        batch = flow.health_partials()
        partials.extend(batch)
        flow.commit()
        if monitor is not None:
            for o in batch:
                monitor.add(o.value)
            outputs.extend(monitor.evaluate())
    return outputs, partials


@pytest.fixture(scope="module")
def sixty_days() -> list[tuple[int, int, bytes, bytes]]:
    return _messages(SimConfig(seed=7, start=date(2025, 1, 1), days=60))


def test_flow_day_records_count_every_discharge_and_label(sixty_days) -> None:
    tables = _tables()
    flow = AdtFlow(source_topic="hospital.adt", **tables)
    outputs, partials = _batches(flow, sixty_days, 300)
    assert partials and all(o.topic == HEALTH_PARTIALS and o.route == "F01" for o in partials)
    final = {o.key: json.loads(o.value) for o in partials}  # the last record per key
    scores = [json.loads(o.value) for o in outputs if o.topic == "discharge_scores"]
    labels = [json.loads(o.value) for o in outputs if o.topic == "readmission_labels"]
    assert sum(r["n"] for r in final.values()) == len(scores)
    assert sum(r["labels"].get("all", [0])[0] for r in final.values()) == len(labels)
    assert sum(r["labels"].get("all", [0, 0])[1] for r in final.values()) == \
        sum(lab["readmitted"] for lab in labels)
    assert all(sum(r["hist"]["score"]) == r["n"] for r in final.values())
    groups = {g.split("=")[0] for r in final.values() for g in r["labels"]}
    assert groups == {"all", "sex", "race", "payer", "age"}
    key = next(iter(final))
    facility, partition, day = key.split("|")
    assert tables["health"][f"h{partition}|{facility}|{day}"] == {
        k: v for k, v in final[key].items() if k not in ("facility_id", "partition", "day")}


def test_flow_records_do_not_depend_on_batch_cuts_or_restarts(sixty_days) -> None:
    _, whole = _batches(AdtFlow(source_topic="hospital.adt", **_tables()), sixty_days, 500)
    tables = _tables()
    cut = len(sixty_days) // 2
    _, first = _batches(AdtFlow(source_topic="hospital.adt", **tables), sixty_days[:cut], 77)
    restored = {name: json.loads(json.dumps(t)) for name, t in tables.items()}
    flow = AdtFlow(source_topic="hospital.adt", **restored)
    for p, off, key, raw in sixty_days[cut:cut + 100]:  # processed, then the worker dies
        flow.process(raw, p, off, key=key, commit=False)
    flow.rollback()
    _, second = _batches(flow, sixty_days[cut:], 311)
    last = lambda outs: {o.key: o.value for o in outs}  # noqa: E731
    assert last(first + second) == last(whole)


def test_error_detectors_are_stored_at_the_commit_and_rolled_back_with_the_batch(sixty_days) -> None:
    """The flow keeps each error detector live from label to label and stores it with the
    batch's commit: the stored detectors are those of a flow that stores them at every label
    (the detector round-trips exactly), batch cuts, restarts and rolled-back batches aside."""
    whole = _tables()
    _batches(AdtFlow(source_topic="hospital.adt", **whole), sixty_days, 500)
    tables = _tables()
    flow = AdtFlow(source_topic="hospital.adt", **tables)
    for p, off, key, raw in sixty_days[:1500]:
        flow.process(raw, p, off, key=key, commit=False)  # labels from day 30 update detectors
    flow.rollback()
    _batches(flow, sixty_days, 97)
    detectors = lambda t: {k: v for k, v in t["health"].items() if k.startswith("e")}  # noqa: E731
    assert detectors(tables) and detectors(tables) == detectors(whole)


# --------------------------------------------------------------------------- simulated years


def _year_checks(cfg: SimConfig) -> tuple[list[ModelHealth], list[ModelHealth]]:
    """(last message per check_id of the monitor, error-drift warnings) of a simulated run."""
    flow = AdtFlow(source_topic="hospital.adt", **_tables())
    outputs, _ = _batches(flow, _messages(cfg), 500, HealthMonitor({}))
    last = {o.check_id: o for o in outputs if isinstance(o, ModelHealth)}
    drift = [ModelHealth.model_validate_json(o.value) for o in outputs
             if not isinstance(o, ModelHealth) and o.topic == MODEL_HEALTH]
    return list(last.values()), drift


def test_a_stationary_year_raises_no_psi_warning() -> None:
    checks, _ = _year_checks(SimConfig(start=date(2025, 1, 1), days=365))
    psi = [c for c in checks if c.check in ("psi_score", "psi_feature")]
    assert len({c.window_end for c in psi}) > 200  # evaluated every day after the warm-up
    first = min(c.window_start for c in psi).date()
    assert first >= date(2025, 1, 1) + timedelta(days=health.WARM_UP_DAYS)
    assert [c.message for c in psi if c.level != "ok"] == []
    assert {c.subject for c in psi} == set(health.psi_edges())


def test_a_drift_scenario_raises_a_psi_warning_within_14_days() -> None:
    shift = date(2025, 6, 15)
    checks, _ = _year_checks(SimConfig(start=date(2025, 1, 1), days=185, shift_at=shift))
    psi = [c for c in checks if c.check in ("psi_score", "psi_feature")]
    assert all(c.level == "ok" for c in psi if c.window_end.date() <= shift)
    warned = sorted(c.window_end.date() for c in psi if c.level != "ok")
    assert warned and warned[0] <= shift + timedelta(days=14)
