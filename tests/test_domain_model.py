"""Online model: learns a synthetic logistic signal, explains, round-trips its bytes, refuses corruption."""

from __future__ import annotations

import math
import random

import pytest

from stream.domain.features import FEATURE_NAMES
from stream.domain.metrics import auc
from stream.domain.model import OnlineRiskModel

TRUE_W = {"prior_admissions_12m": 0.7, "charlson": 0.45, "age": 0.035, "ed_visits_6m": 0.6, "n_procedures": -0.35}


def synthetic(n: int, seed: int):
    """Logistic data on real feature names, ~15% positives, with an unobserved noise term."""
    rng = random.Random(seed)
    for _ in range(n):
        x = {
            "age": float(rng.randint(18, 95)),
            "prior_admissions_12m": float(min(int(rng.expovariate(1.2)), 10)),
            "charlson": float(rng.choice([0, 0, 0, 1, 1, 2, 3, 4, 6])),
            "ed_visits_6m": float(min(int(rng.expovariate(1.5)), 10)),
            "n_procedures": float(rng.randint(0, 4)),
            "sex_male": float(rng.random() < 0.5),  # pure noise feature
        }
        z = -5.0 + sum(w * x[f] for f, w in TRUE_W.items()) + rng.gauss(0, 0.5)
        p = 1 / (1 + math.exp(-z))
        yield x, rng.random() < p, p


def test_learns_a_logistic_signal_prequentially() -> None:
    m = OnlineRiskModel()
    scores, labels, truth = [], [], []
    for i, (x, y, p) in enumerate(synthetic(5000, seed=11)):
        s = m.predict(x)
        before = m.predict(x)
        assert s == before  # predict does not learn
        if i >= 2000:
            scores.append(s)
            labels.append(y)
            truth.append(p)
        m.learn(x, y)
    rate = sum(labels) / len(labels)
    assert 0.08 < rate < 0.25
    model_auc, true_auc = auc(scores, labels), auc(truth, labels)
    assert model_auc > 0.75
    assert model_auc > 0.95 * true_auc
    # calibrated despite the positive weighting: mean score near the base rate
    assert abs(sum(scores) / len(scores) - rate) < 0.05
    assert m.n_learned == 5000 and m.version == "logreg-v1.n5000"


def test_explain_ranks_the_positive_contributions() -> None:
    m = OnlineRiskModel()
    for x, y, _ in synthetic(3000, seed=5):
        m.learn(x, y)
    risky = {"age": 90.0, "prior_admissions_12m": 6.0, "charlson": 6.0, "ed_visits_6m": 4.0,
             "n_procedures": 0.0, "sex_male": 0.0}
    top = m.explain(risky, k=3)
    assert len(top) == 3
    assert [t.contribution for t in top] == sorted((t.contribution for t in top), reverse=True)
    assert {t.feature for t in top} <= {"prior_admissions_12m", "charlson", "ed_visits_6m", "age", "n_procedures"}
    assert top[0].contribution > 0
    texts = {t.feature: t.text for t in top}
    if "prior_admissions_12m" in texts:
        assert texts["prior_admissions_12m"] == "admitted 6 times in the past 12 months"
    assert m.explain(risky, k=3) == top  # deterministic


def test_bytes_round_trip_gives_identical_predictions() -> None:
    m = OnlineRiskModel()
    data = list(synthetic(1500, seed=2))
    for x, y, _ in data[:1000]:
        m.learn(x, y)
    m2 = OnlineRiskModel.from_bytes(m.to_bytes())
    assert m2.version == m.version
    assert [m2.predict(x) for x, _, _ in data[1000:]] == [m.predict(x) for x, _, _ in data[1000:]]
    # and they keep learning identically
    for x, y, _ in data[1000:1200]:
        m.learn(x, y)
        m2.learn(x, y)
    assert m2.pipeline["LogisticRegression"].weights == m.pipeline["LogisticRegression"].weights
    assert [m2.predict(x) for x, _, _ in data[1200:]] == [m.predict(x) for x, _, _ in data[1200:]]


def test_same_sequence_same_model() -> None:
    a, b = OnlineRiskModel(), OnlineRiskModel()
    for x, y, _ in synthetic(500, seed=9):
        a.learn(x, y)
        b.learn(x, y)
    assert a.to_bytes() == b.to_bytes()  # same history, same bytes (fresh objects pickle alike)


@pytest.mark.parametrize("where", ["body", "digest", "header"])
def test_corrupted_bytes_are_refused(where: str) -> None:
    m = OnlineRiskModel()
    m.learn({"age": 70.0}, True)
    data = bytearray(m.to_bytes())
    pos = {"body": len(data) - 5, "digest": 10, "header": 0}[where]
    data[pos] ^= 0xFF
    with pytest.raises(ValueError):
        OnlineRiskModel.from_bytes(bytes(data))
    with pytest.raises(ValueError):
        OnlineRiskModel.from_bytes(b"")


def test_all_real_features_are_accepted() -> None:
    m = OnlineRiskModel()
    x = dict.fromkeys(FEATURE_NAMES, 1.0)
    m.learn(x, True)
    assert 0.0 < m.predict(x) < 1.0
    assert len(m.explain(x, k=5)) == 5
