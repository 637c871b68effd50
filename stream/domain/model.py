"""The online readmission model: a river pipeline (standard scaler + logistic regression).

Why these choices:

* **Online logistic regression** learns from each label as it becomes known (30 days after the
  discharge at the latest), stays interpretable (top factors = weight x scaled value) and costs
  microseconds per event.
* **Class imbalance** (~15% readmitted): plain SGD on the log loss spends most steps on negatives
  and learns the positive-class features slowly. ``Log(weight_pos=w)`` scales the gradient of each
  positive by ``w`` so both classes pull about equally. The weighted model's odds are ``w`` times
  the true odds, so :meth:`predict` divides the odds by ``w`` again (the standard prior
  correction): the score stays a calibrated probability and the ranking (AUC) is unchanged.
* **Determinism**: no randomness; the state depends only on the sequence of ``learn`` calls, and
  ``predict`` never learns (river pipelines do not update the scaler while predicting).
* **Serialization**: pickle behind a magic + SHA-256 header; :meth:`from_bytes` refuses bytes whose
  checksum does not match, so we only ever unpickle what this class wrote.

>>> m = OnlineRiskModel()
>>> m.predict({"a": 1.0})  # untrained: even weighted odds, corrected by 1 / weight_pos
0.25
>>> for i in range(200):
...     m.learn({"a": float(i % 2)}, i % 2 == 1)
>>> m.predict({"a": 1.0}) > m.predict({"a": 0.0}), m.version
(True, 'logreg-v1.n200')
>>> OnlineRiskModel.from_bytes(m.to_bytes()).predict({"a": 1.0}) == m.predict({"a": 1.0})
True
"""

from __future__ import annotations

import hashlib
import pickle

from river import compose, linear_model, optim, preprocessing

from contracts.events import TopFactor
from stream.domain.features import feature_text

MAGIC = b"WSRM1\n"
# Tuned on a simulated year (bench/bench_model.py, prequential per-partition AUC after 500
# labels): SGD lr 0.02 -> 0.691, 0.005 -> 0.738, 0.002 -> 0.750, 0.001 -> 0.751, 0.0005 -> 0.746;
# AdaGrad / Adam no better (0.750); weight_pos 2..5 and l2 0..1e-2 within 0.002. The features
# are standard-scaled, ~50 of them, so a larger step overshoots on every positive.
LEARNING_RATE = 0.002
WEIGHT_POS = 3.0
L2 = 1e-4
INTERCEPT_LR = 0.01
SCHEMA = "logreg-v1"


class OnlineRiskModel:
    """P(readmitted within 30 days | discharge features), learned online."""

    def __init__(
        self,
        lr: float = LEARNING_RATE,
        weight_pos: float = WEIGHT_POS,
        l2: float = L2,
        intercept_lr: float = INTERCEPT_LR,
    ) -> None:
        self.weight_pos = weight_pos
        self.pipeline = compose.Pipeline(
            preprocessing.StandardScaler(),
            linear_model.LogisticRegression(
                optimizer=optim.SGD(lr),
                loss=optim.losses.Log(weight_pos=weight_pos),
                l2=l2,
                intercept_lr=intercept_lr,
            ),
        )
        self.n_learned = 0

    @property
    def version(self) -> str:
        """Model identity for the score records: changes with every label learned."""
        return f"{SCHEMA}.n{self.n_learned}"

    def predict(self, x: dict[str, float]) -> float:
        """Calibrated P(readmit) (prior correction of the positive weighting); never learns."""
        p = self.pipeline.predict_proba_one(x).get(True, 0.0)
        p = min(max(p, 1e-12), 1 - 1e-12)
        odds = p / (1 - p) / self.weight_pos
        return odds / (1 + odds)

    def learn(self, x: dict[str, float], y: bool) -> None:
        self.pipeline.learn_one(x, bool(y))
        self.n_learned += 1

    def explain(self, x: dict[str, float], k: int = 3) -> list[TopFactor]:
        """The ``k`` features that raise this score most (weight x scaled value, largest first).

        Ties are broken by feature name so the explanation is deterministic. When fewer than
        ``k`` features push the score up, the least negative ones fill the list.
        """
        scaled = self.pipeline["StandardScaler"].transform_one(x)
        weights = self.pipeline["LogisticRegression"].weights
        contrib = {f: weights.get(f, 0.0) * v for f, v in scaled.items()}
        ranked = sorted(contrib.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
        return [
            TopFactor(feature=f, contribution=round(c, 6), text=feature_text(f, x.get(f, 0.0)))
            for f, c in ranked
        ]

    # ------------------------------------------------------------------ serialization

    def to_bytes(self) -> bytes:
        body = pickle.dumps(self.__dict__, protocol=pickle.HIGHEST_PROTOCOL)
        return MAGIC + hashlib.sha256(body).digest() + body

    @classmethod
    def from_bytes(cls, data: bytes) -> "OnlineRiskModel":
        """Restore a model written by :meth:`to_bytes`; ValueError when the bytes are not ours."""
        if not data.startswith(MAGIC) or len(data) < len(MAGIC) + 32:
            raise ValueError("not a wardstream risk model (bad header)")
        digest, body = data[len(MAGIC): len(MAGIC) + 32], data[len(MAGIC) + 32:]
        if hashlib.sha256(body).digest() != digest:
            raise ValueError("risk model checksum mismatch (corrupted or foreign bytes)")
        model = cls.__new__(cls)
        model.__dict__.update(pickle.loads(body))
        return model

