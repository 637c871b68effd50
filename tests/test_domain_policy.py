"""Alert threshold policy: recall target on its buffer, window, default, serialization; reasons."""

from __future__ import annotations

import json
import random

import pytest

from stream.contracts import TopFactor
from stream.domain.metrics import recall_precision
from stream.domain.policy import ThresholdPolicy, alert_reasons


def feed(pol: ThresholdPolicy, n: int, seed: int) -> list[tuple[float, bool]]:
    rng = random.Random(seed)
    seen = []
    for _ in range(n):
        y = rng.random() < 0.15
        s = min(max(rng.gauss(0.35 if y else 0.2, 0.12), 0.0), 1.0)
        pol.observe(s, y)
        seen.append((s, y))
    return seen


@pytest.mark.parametrize("target", [0.8, 0.9, 0.5])
def test_threshold_reaches_recall_on_its_buffer_and_is_the_highest(target: float) -> None:
    pol = ThresholdPolicy(recall_target=target, window=2000)
    seen = feed(pol, 5000, seed=7)[-2000:]  # only the last `window` count
    t = pol.threshold
    scores, labels = [s for s, _ in seen], [y for _, y in seen]
    recall, _ = recall_precision([s >= t for s in scores], labels)
    assert recall >= target
    # any higher threshold (the next distinct positive score up) misses the target
    higher = min((s for s, y in seen if y and s > t), default=None)
    assert higher is not None
    r_higher, _ = recall_precision([s >= higher for s in scores], labels)
    assert r_higher < target


def test_default_until_enough_positives() -> None:
    pol = ThresholdPolicy(window=2000, min_positives=20, default_threshold=0.42)
    for i in range(19):
        pol.observe(0.9, True)
    for i in range(500):
        pol.observe(0.1, False)
    assert pol.threshold == 0.42
    pol.observe(0.8, True)
    assert pol.threshold == 0.9  # 16 of 20 positives at 0.9: recall 0.8 exactly
    assert pol.is_high_risk(0.9) and not pol.is_high_risk(0.85)


def test_window_forgets_old_labels() -> None:
    pol = ThresholdPolicy(window=100, min_positives=5)
    for _ in range(100):
        pol.observe(0.9, True)
    assert pol.threshold == 0.9
    for _ in range(100):
        pol.observe(0.3, True)
    assert pol.threshold == 0.3 and pol.n_positives == 100


def test_round_trip() -> None:
    pol = ThresholdPolicy(recall_target=0.85, window=300, min_positives=3)
    feed(pol, 1000, seed=3)
    back = ThresholdPolicy.from_dict(json.loads(json.dumps(pol.to_dict())))
    assert back.to_dict() == pol.to_dict() and back.threshold == pol.threshold


def test_rejects_bad_options() -> None:
    with pytest.raises(ValueError):
        ThresholdPolicy(recall_target=0)
    with pytest.raises(ValueError):
        ThresholdPolicy(window=0)


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
