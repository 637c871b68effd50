"""Alert budget: share k of recent scores per facility, LACE cold start, window, pacing, state; reasons."""

from __future__ import annotations

import json
import random
from datetime import datetime, timedelta, timezone

import pytest

from contracts.events import TopFactor
from stream.domain.policy import (
    BUDGET,
    LACE_COLD_START,
    AlertBudget,
    alert_reasons,
    lace_cutoff,
    score_threshold,
)

T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)


def stream(budget: AlertBudget, n: int, seed: int, share: float = 0.10, warm: bool = True,
           facility: str = "F01", per_day: int = 12, drift: float = 0.0) -> list:
    """Feed ``n`` discharges (``per_day`` a day); return the decisions."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        score = min(max(rng.gauss(0.15 + drift * i / n, 0.08), 0.0), 1.0)
        lace = min(max(int(rng.gauss(8, 3)), 0), 19)
        at = T0 + timedelta(days=i / per_day)
        out.append(budget.decide(facility, at, score, lace, share, warm))
    return out


@pytest.mark.parametrize("share", [0.05, 0.10, 0.18])
def test_the_budget_flags_its_share(share: float) -> None:
    decisions = stream(AlertBudget(), 6000, seed=3, share=share)[1000:]
    assert all(d.policy == BUDGET and d.alert_share == share for d in decisions)
    flagged = sum(d.high_risk for d in decisions) / len(decisions)
    assert abs(flagged - share) <= 0.1 * share


def test_pacing_keeps_the_share_while_scores_drift_upwards() -> None:
    """Scores rising by one standard deviation over the year: an unpaced quantile over-flags."""
    paced = stream(AlertBudget(), 4400, seed=5, drift=0.08)[1000:]
    assert abs(sum(d.high_risk for d in paced) / len(paced) - 0.10) <= 0.01


def test_a_discharge_meets_the_threshold_of_the_scores_before_it() -> None:
    b = AlertBudget(min_scores=5)
    for i in range(10):
        b.decide("F01", T0, i / 10, 3, 0.10, warm=True)
    d = b.decide("F01", T0, 0.9, 3, 0.10, warm=True)  # ties the highest before it: flagged
    assert d.policy == BUDGET and d.threshold == 0.9 and d.high_risk
    d = b.decide("F01", T0, 0.9, 3, 0.10, warm=True)  # the 0.9 just added now counts
    assert d.high_risk and d.threshold == 0.9
    assert not b.decide("F01", T0, 0.85, 3, 0.10, warm=True).high_risk


def test_cold_start_until_the_model_is_warm_and_enough_warm_scores() -> None:
    b = AlertBudget(min_scores=50)
    cold = stream(b, 600, seed=1, warm=False)
    assert all(d.policy == LACE_COLD_START for d in cold)
    assert all(d.threshold == 1.0 for d in cold)  # no warm score yet: no budget threshold
    early = stream(b, 50, seed=2)  # warm now, but the window holds < 50 warm scores
    assert all(d.policy == LACE_COLD_START and d.threshold < 1.0 for d in early[1:])
    assert stream(b, 1, seed=4)[0].policy == BUDGET


def test_cold_start_flags_lace_10_or_more_capped_at_the_share() -> None:
    rng = random.Random(9)
    b = AlertBudget()
    laces = [min(max(int(rng.gauss(9, 3)), 0), 19) for _ in range(3000)]  # ~40% reach 10
    flags = [b.decide("F01", T0 + timedelta(hours=i), 0.5, v, 0.10, warm=False).high_risk
             for i, v in enumerate(laces)]
    assert all(v >= 10 for v, f in zip(laces, flags) if f)
    assert 0.05 <= sum(flags[500:]) / len(flags[500:]) <= 0.10
    # a generous share: LACE >= 10 itself
    b = AlertBudget()
    flags = [b.decide("F01", T0 + timedelta(hours=i), 0.5, v, 0.60, warm=False).high_risk
             for i, v in enumerate(laces)]
    assert flags[500:] == [v >= 10 for v in laces[500:]]


def test_lace_cutoff_and_score_threshold() -> None:
    assert lace_cutoff([10] * 9 + [3] * 91, 0.10) == 10
    assert lace_cutoff([10] * 11 + [3] * 89, 0.10) == 11
    assert lace_cutoff([15] * 11 + [3] * 89, 0.10) == 16
    assert lace_cutoff([3] * 100, 0.10) == 10
    assert score_threshold([0.1 * i for i in range(1, 11)], 0.10) == pytest.approx(1.0)
    assert score_threshold([0.1 * i for i in range(1, 11)], 0.25) == pytest.approx(0.9)  # floor(2.5)
    assert score_threshold([0.3], 0.01) == 0.3


def test_window_keeps_28_days_of_event_time_at_most_500() -> None:
    b = AlertBudget()
    stream(b, 28 * 10, seed=1, per_day=10)
    assert b.size("F01") == 280
    b.decide("F01", T0 + timedelta(days=60), 0.1, 3, 0.10, warm=True)
    assert b.size("F01") == 1  # everything older than 28 days before it left
    stream(b, 900, seed=1, per_day=40)
    assert b.size("F01") == 500


def test_facilities_have_their_own_windows_and_shares() -> None:
    b = AlertBudget(min_scores=20)
    a = stream(b, 3000, seed=1, share=0.05, facility="F01")[500:]
    c = stream(b, 3000, seed=2, share=0.20, facility="F02")[500:]
    assert abs(sum(d.high_risk for d in a) / len(a) - 0.05) < 0.01
    assert abs(sum(d.high_risk for d in c) / len(c) - 0.20) < 0.02
    assert b.size("F01") == b.size("F02") == 337  # 28 days x 12, both ends included


def test_round_trip_and_replay_give_the_same_decisions() -> None:
    b = AlertBudget()
    stream(b, 2000, seed=3)
    back = AlertBudget.from_dict(json.loads(json.dumps(b.to_dict())))
    assert back.to_dict() == b.to_dict()
    assert stream(back, 300, seed=8) == stream(b, 300, seed=8)
    assert AlertBudget.from_dict({"recall_target": 0.85, "buffer": []}).to_dict() == {"windows": {}}


class PlainBudget:
    """The budget's rules read off its docstring, summing the whole window at every decision
    (what :class:`AlertBudget` keeps up to date incrementally)."""

    def __init__(self, min_scores: int) -> None:
        self.min_scores, self.windows = min_scores, {}

    def decide(self, facility: str, at: datetime, score: float, lace: int, share: float, warm: bool):
        window = self.windows.setdefault(facility, [])
        t = int(at.timestamp())
        window[:] = [e for e in window if e[0] >= t - 28 * 86_400]
        scores = [s for _, s, _, _ in window if s is not None]
        decided = [f for *_, f in window if f is not None]
        pace = 1.0
        if decided:
            over = (sum(decided) - share * len(decided)) / (share * len(decided))
            pace = min(max(1.0 - 2.0 * over, 0.5), 1.5)
        threshold = score_threshold(scores, share * pace)
        if warm and threshold is not None and len(scores) >= self.min_scores:
            flagged, policy = score >= threshold, BUDGET
        else:
            flagged, policy = lace >= lace_cutoff([v for _, _, v, _ in window], share), LACE_COLD_START
        window.append((t, score if warm else None, lace, int(flagged) if policy == BUDGET else None))
        del window[:-500]
        return flagged, policy, 1.0 if threshold is None else threshold

    def forget(self, facility: str, at: datetime, score: float, lace: int) -> bool:
        window = self.windows.get(facility, [])
        for i in range(len(window) - 1, -1, -1):
            t, s, v, _ = window[i]
            if t == int(at.timestamp()) and v == lace and (s is None or abs(s - score) < 1e-12):
                del window[i]
                return True
        return False


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_decisions_equal_the_rules_summed_over_the_whole_window(seed: int) -> None:
    """Cold and warm discharges, ties, bursts past the 500 cap, gaps past 28 days, withdrawals and
    a save / restore on the way: every decision equals the plain reading of the rules."""
    rng = random.Random(seed)
    budget, plain = AlertBudget(min_scores=30), PlainBudget(min_scores=30)
    at, seen, store = T0, [], {}  # store: the chunks as the worker keeps them
    for i in range(6000):
        at += timedelta(hours=rng.choice([0.01, 0.5, 2, 6] + [24 * 30] * (i % 997 == 0)))
        facility = rng.choice(["F01", "F02"])
        score = round(rng.random(), 2)  # ties
        lace = rng.randint(-1, 21)  # out-of-range values are clamped alike
        share, warm = rng.choice([0.05, 0.10, 0.6, 1.0]), i > 800
        d = budget.decide(facility, at, score, lace, share, warm)
        assert (d.high_risk, d.policy, d.threshold) == plain.decide(facility, at, score, lace, share, warm)
        seen.append((facility, at, score, lace))
        if rng.random() < 0.05:
            gone = rng.choice(seen[-50:])
            assert budget.forget(*gone) == plain.forget(*gone)
        if i % 1500 == 0:  # stored whole (the older way) or in chunks
            budget = AlertBudget.from_dict(json.loads(json.dumps(budget.to_dict())))
            budget.min_scores = 30
        elif rng.random() < 0.2:  # a batch ends: its chunks are stored; sometimes a restart
            store.update(json.loads(json.dumps(budget.changes())))
            store = {k: v for k, v in store.items() if v is not None}
            if rng.random() < 0.2:
                index = json.loads(json.dumps(budget.index()))
                budget = AlertBudget.from_records(index, store.get)
                budget.min_scores = 30


def test_a_batch_stores_the_chunks_it_changed_not_the_window() -> None:
    b = AlertBudget()
    stream(b, 600, seed=2, per_day=12)  # past the 28 days: entries now leave at the front too
    b.changes()
    whole = len(json.dumps(b.to_dict()))
    for i in range(600, 700):  # batches of 5 discharges, 2 hours apart
        b.decide("F01", T0 + timedelta(hours=2 * i), 0.1 + i % 7 / 10, 5, 0.10, warm=True)
        if i % 5:
            continue
        changes = b.changes()
        assert 1 <= len(changes) <= 4  # the newest chunk and the oldest, each maybe with its neighbour
        assert len(json.dumps(changes)) < whole / 3


def test_rejects_bad_options() -> None:
    with pytest.raises(ValueError):
        AlertBudget(window_days=0)
    with pytest.raises(ValueError):
        AlertBudget().decide("F01", T0, 0.5, 10, 0.0, warm=True)


def test_alert_reasons() -> None:
    factors = [
        TopFactor(feature="prior_admissions_12m", contribution=0.5, text="admitted 3 times in the past 12 months"),
        TopFactor(feature="chronic_copd", contribution=0.2, text="chronic condition: copd"),
        TopFactor(feature="payer_private", contribution=-0.1, text="payer: private"),
    ]
    reasons = alert_reasons(factors, 8, {"L": 4, "A": 3, "C": 1, "E": 0})
    assert reasons == [
        "LACE index 8 (< 10; length of stay 4, acute admission 3, comorbidity 1)",
        "admitted 3 times in the past 12 months",
        "chronic condition: copd",
    ]
    assert alert_reasons([], 14, {"L": 7, "A": 3, "C": 0, "E": 4})[0].startswith("LACE index 14 (>= 10: high risk")
