"""The model-health views (V007) equal scikit-learn and numpy on the same synthetic discharges.

A few hundred scored, labelled discharges across two facilities and four months (LACE full of
ties, a cold-start month, discharges whose label window is still open, unlabelled ones) go
straight into a freshly migrated PostgreSQL; every figure of every group of
``model_health_figures`` is recomputed independently (roc_auc_score, brier_score_loss, an
unpenalized LogisticRegression on logit(score), a root of the calibration-in-the-large score
equation, numpy for the alert flag and LACE's fractional cut). Then the model-health board's
panels run as Grafana's read-only role and must all return rows.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import psycopg2
import pytest
from scipy.optimize import brentq
from scipy.special import expit
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss, roc_auc_score

from grafana.boards import model_health
from grafana.run import reader_connection, resolve_variables, run_board, shape_problems
from wardstream.config import settings

pytestmark = pytest.mark.e2e

START = datetime(2025, 1, 3, tzinfo=timezone.utc)
DAYS = 107  # to 2025-04-20: four calendar months, 90-day windows ending at each month's end
SHARES = {"F01": 0.10, "F02": 0.15}
KEYS = ["facility_id", "period", "period_start", "period_end", "cohort", "dimension", "subgroup"]
DIMENSIONS = ("sex", "race", "payer", "age_band")
EPS = 1e-6  # the views clamp scores to [EPS, 1 - EPS] before the logit


def _age_band(age: int) -> str:
    return "<50" if age < 50 else "50-64" if age < 65 else "65-79" if age < 80 else "80+"


def _discharges(seed: int = 15) -> pd.DataFrame:
    """Scored discharges with demographics, policy, flag and label (None = label not known)."""
    rng = np.random.default_rng(seed)
    rows = []
    for facility, k in SHARES.items():
        n = 230
        at = START + pd.to_timedelta(np.sort(rng.integers(0, DAYS * 86_400_000_000, n)), unit="us")
        risk = rng.normal(0, 1, n)
        score = expit(-1.9 + 0.9 * risk + rng.normal(0, 0.3, n))
        score[:3] = [0.0, 1.0, 0.5]  # the clamp before the logit
        lace = np.clip(np.round(8 + 2.2 * risk + rng.normal(0, 2, n)), 0, 19).astype(int)  # many ties
        readmitted = rng.uniform(size=n) < expit(-1.8 + 0.8 * risk)
        for i in range(n):
            day = (at[i] - START).days
            policy = None if day < 5 else "lace_cold_start" if day < 30 else "budget"
            flag = bool(lace[i] >= 11) if policy != "budget" else bool(score[i] >= np.quantile(score, 1 - k))
            age = int(rng.integers(20, 96))
            rows.append({
                "encounter_id": f"E-{facility}-{i:04d}", "patient_id": f"P-{facility}-{i:04d}",
                "facility_id": facility, "discharged_at": at[i].to_pydatetime(), "score": float(score[i]),
                "lace": int(lace[i]), "high_risk": flag, "policy": policy,
                "alert_share": None if policy is None else k, "readmitted": bool(readmitted[i]),
                "sex": "F" if rng.uniform() < 0.55 else "M", "age": age, "age_band": _age_band(age),
                "race": rng.choice(["white", "black", "hispanic", "asian", "other"], p=[.5, .2, .15, .1, .05]),
                "payer": rng.choice(["medicare", "medicaid", "private", "uninsured"]),
            })
        last_known = max(r["discharged_at"] for r in rows if r["facility_id"] == facility and not r["readmitted"])
        for j in range(4):  # after the last non-readmission label: only readmissions known yet
            rows.append({**rows[-1], "encounter_id": f"E-{facility}-open{j}", "patient_id": f"P-{facility}-o{j}",
                         "discharged_at": last_known + timedelta(days=2 + j), "readmitted": True})
        for j in range(3):  # scored, no label at all
            rows.append({**rows[-1], "encounter_id": f"E-{facility}-unl{j}", "patient_id": f"P-{facility}-u{j}",
                         "discharged_at": last_known + timedelta(days=3, hours=j), "readmitted": None})
    return pd.DataFrame(rows)


def _load(url: str, d: pd.DataFrame) -> None:
    conn = psycopg2.connect(url)
    try:
        with conn, conn.cursor() as cur:
            for f in SHARES:
                cur.execute("INSERT INTO facilities (facility_id, name, beds) VALUES (%s, %s, 100)", (f, f))
                cur.execute("INSERT INTO providers (provider_id, facility_id, department, capacity) "
                            "VALUES (%s, %s, 'Medicine', 20)", (f"DR-{f}", f))
            for r in d.itertuples():
                at = r.discharged_at
                cur.execute("INSERT INTO patients (patient_id, age, sex, race, payer) VALUES (%s, %s, %s, %s, %s)",
                            (r.patient_id, r.age, r.sex, r.race, r.payer))
                cur.execute(
                    """INSERT INTO encounters (encounter_id, patient_id, facility_id, department,
                           attending_provider_id, age_at_admission, sex, payer_at_admission, payer,
                           admitted_at, discharged_at, last_event_at, last_event_offset)
                       VALUES (%s, %s, %s, 'Medicine', %s, %s, %s, %s, %s, %s, %s, %s, 0)""",
                    (r.encounter_id, r.patient_id, r.facility_id, f"DR-{r.facility_id}", r.age, r.sex, r.payer,
                     r.payer, at - timedelta(days=4), at, at))
                cur.execute(
                    """INSERT INTO discharge_scores (encounter_id, patient_id, facility_id, department,
                           attending_provider_id, discharged_at, score, lace, threshold, high_risk,
                           model_version, top_factors, source_partition, source_offset, alert_share, policy)
                       VALUES (%s, %s, %s, 'Medicine', %s, %s, %s, %s, 0.3, %s, 'v1', '[]', 0, 0, %s, %s)""",
                    (r.encounter_id, r.patient_id, r.facility_id, f"DR-{r.facility_id}", at, r.score, r.lace,
                     r.high_risk, None if pd.isna(r.alert_share) else r.alert_share,
                     r.policy if isinstance(r.policy, str) else None))
                if r.high_risk:
                    cur.execute(
                        """INSERT INTO alerts (alert_id, encounter_id, patient_id, facility_id, department,
                               attending_provider_id, discharged_at, score, lace, threshold, reasons,
                               source_partition, source_offset)
                           VALUES (%s, %s, %s, %s, 'Medicine', %s, %s, %s, %s, 0.3, ARRAY['score'], 0, 0)""",
                        (f"alert-{r.encounter_id}", r.encounter_id, r.patient_id, r.facility_id,
                         f"DR-{r.facility_id}", at, r.score, r.lace))
                if r.readmitted is not None:
                    cur.execute("INSERT INTO readmissions VALUES (%s, %s, %s, %s, NULL, %s, 0, 0)",
                                (r.encounter_id, r.patient_id, at, bool(r.readmitted), at + timedelta(days=30)))
            psi = [("psi_score", "score", 0.04, "ok"), ("psi_feature", "age", 0.13, "watch"),
                   ("psi_feature", "prior_admissions", 0.31, "act")]
            for f in SHARES:
                for w in range(3):
                    end = START + timedelta(days=56 + 28 * w)
                    for check, subject, value, level in psi:
                        cur.execute(
                            """INSERT INTO model_health VALUES (%s, %s, %s, %s, %s, %s, 0.10, 0.25, NULL, 600,
                                   %s, %s, %s, 0, 0)""",
                            (f"{check}:{f}:{subject}:{w}", check, f, subject, level if w == 2 else "ok",
                             value * (1 + w) / 3, end - timedelta(days=28), end,
                             f"PSI of {subject} between consecutive 28-day windows"))
    finally:
        conn.close()


# --------------------------------------------------------------------------- the oracle


def _lace_true_positives(lace: np.ndarray, y: np.ndarray, flagged: int) -> float:
    """Readmissions among the top ``flagged`` by LACE, a tied level at the cut taken pro rata."""
    remaining, tp = float(flagged), 0.0
    for level in sorted(set(lace.tolist()), reverse=True):
        at = lace == level
        take = min(float(at.sum()), remaining)
        tp += take / at.sum() * y[at].sum()
        remaining -= take
    return tp


def _calibration(score: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    x = np.log(np.clip(score, EPS, 1 - EPS) / (1 - np.clip(score, EPS, 1 - EPS)))
    fit = LogisticRegression(C=np.inf, solver="newton-cholesky", tol=1e-12, max_iter=1000)
    fit.fit(x.reshape(-1, 1), y)
    citl = brentq(lambda c: float(np.sum(y - expit(c + x))), -40, 40, xtol=1e-13)
    return float(fit.intercept_[0]), float(fit.coef_[0, 0]), citl


def _figures(g: pd.DataFrame) -> dict[str, float | None]:
    y = g.readmitted.to_numpy(dtype=bool)
    s, lace, flag = g.score.to_numpy(), g.lace.to_numpy(), g.high_risk.to_numpy(dtype=bool)
    n, pos, flagged, tp = len(g), int(y.sum()), int(flag.sum()), int((flag & y).sum())
    both = 0 < pos < n
    lace_tp = _lace_true_positives(lace, y, flagged)
    mean_y = pos / n
    brier = brier_score_loss(y, s)
    out = {
        "labelled": n, "readmissions": pos, "flagged": flagged, "alert_rate": flagged / n,
        "readmission_rate": mean_y,
        "target_share": g.alert_share.mean() if g.alert_share.notna().any() else None,
        "budget_share": float((g.policy == "budget").mean()),
        "lace_cold_start_share": float((g.policy == "lace_cold_start").mean()),
        "ppv": tp / flagged if flagged else None, "nne": flagged / tp if tp else None,
        "recall": tp / pos if pos else None,
        "auroc": roc_auc_score(y, s) if both else None,
        "lace_ppv": lace_tp / flagged if flagged else None, "lace_nne": flagged / lace_tp if lace_tp else None,
        "lace_recall": lace_tp / pos if pos else None,
        "lace_auroc": roc_auc_score(y, lace) if both else None,
        "brier": brier, "scaled_brier": 1 - brier / (mean_y * (1 - mean_y)) if both else None,
        "observed_expected": pos / s.sum(),
    }
    # the fits are compared where they are well defined (no separation in a tiny subgroup)
    if n >= 40 and min(pos, n - pos) >= 8:
        out["calibration_intercept"], out["calibration_slope"], out["calibration_in_the_large"] = \
            _calibration(s, y.astype(int))
    return out


def _expected(d: pd.DataFrame) -> dict[tuple, dict]:
    """Every group of model_health_figures, from the raw rows."""
    known = d[d.readmitted.notna()]
    cutoff = known[known.readmitted == False].discharged_at.max()  # noqa: E712
    lab = known[known.discharged_at <= cutoff].copy()
    lab["readmitted"] = lab.readmitted.astype(bool)
    out: dict[tuple, dict] = {}
    for facility, fd in lab.groupby("facility_id"):
        t = pd.DatetimeIndex(fd.discharged_at).tz_convert("UTC")
        months = pd.date_range(t.min().tz_localize(None).to_period("M").to_timestamp(),
                               t.max().tz_localize(None).to_period("M").to_timestamp(), freq="MS", tz="UTC")
        last_end = t.max().floor("D") + pd.Timedelta(days=1)
        periods = []
        for m in months:
            end = m + pd.DateOffset(months=1)
            periods.append(("month", m, end))
            periods.append(("90d", min(end, last_end) - pd.Timedelta(days=90), min(end, last_end)))
        for period, start, end in periods:
            in_period = fd[(t >= start) & (t < end)]
            for cohort in ("all", "budget"):
                rows = in_period if cohort == "all" else in_period[in_period.policy == "budget"]
                groups = [("facility", "all", rows)] + [
                    (dim, value, g) for dim in DIMENSIONS for value, g in rows.groupby(dim)]
                for dim, value, g in groups:
                    if len(g):
                        out[(facility, period, start, end, cohort, dim, value)] = _figures(g)
    return out


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _close(got, want, tol: float) -> bool:
    if _missing(want) or _missing(got):
        return _missing(want) and _missing(got)
    return got is not None and math.isclose(float(got), float(want), rel_tol=tol, abs_tol=tol)


# --------------------------------------------------------------------------- tests


@pytest.fixture()
def health_db(fresh_db):
    from consumers.migrate import migrate

    migrate()
    data = _discharges()
    _load(fresh_db, data)
    return fresh_db, data


def _query(url: str, sql: str) -> pd.DataFrame:
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return pd.DataFrame(cur.fetchall(), columns=[c.name for c in cur.description])
    finally:
        conn.close()


def test_every_figure_equals_scikit_learn_and_numpy(health_db) -> None:
    url, data = health_db
    got = _query(url, "SELECT * FROM model_health_figures")
    got["period_start"] = pd.to_datetime(got.period_start, utc=True)
    got["period_end"] = pd.to_datetime(got.period_end, utc=True)
    got_by_key = {tuple(r[k] for k in KEYS): r for r in got.to_dict("records")}
    expected = _expected(data)
    assert set(got_by_key) == set(expected)
    assert {k[4] for k in expected} == {"all", "budget"} and {k[1] for k in expected} == {"month", "90d"}

    fits = 0
    bad = []
    for key, want in expected.items():
        row = got_by_key[key]
        for name, value in want.items():
            tol = 1e-6 if name.startswith("calibration") else 1e-9
            if not _close(row[name], value, tol):
                bad.append((key, name, row[name], value))
        fits += "calibration_slope" in want
    assert not bad, f"{len(bad)} figures differ, e.g. {bad[:5]}"
    assert fits >= 20  # the calibration fits were compared on many groups
    lace = got[got.lace_ppv.notna()]
    # fractional cuts did happen (LACE ties at the cut), so the pro-rata rule was exercised
    assert ((lace.lace_ppv * lace.flagged) % 1).abs().gt(1e-6).any()


def test_facility_views_equity_and_alert_share(health_db) -> None:
    url, data = health_db
    figures = _query(url, "SELECT * FROM model_health_figures WHERE dimension = 'facility'")
    monthly = _query(url, "SELECT * FROM model_health_monthly")
    rolling = _query(url, "SELECT * FROM model_health_90d")
    assert len(monthly) + len(rolling) == len(figures)
    assert set(monthly.cohort) == {"all", "budget"}
    # the last window of each facility ends with the day of its latest labelled discharge
    last = rolling.groupby("facility_id").window_end.max()
    assert all(t.hour == 0 and t.minute == 0 for t in last)
    assert ((rolling.window_end - rolling.window_start) == pd.Timedelta(days=90)).all()

    equity = _query(url, "SELECT * FROM model_equity")
    assert set(equity.dimension) == set(DIMENSIONS)
    assert set(equity[equity.dimension == "age_band"].subgroup) <= {"<50", "50-64", "65-79", "80+"}
    fac = figures.set_index(["facility_id", "period", "period_start", "cohort"])
    for r in equity.sample(60, random_state=1).itertuples():
        f = fac.loc[(r.facility_id, r.period, r.period_start, r.cohort)]
        assert _close(r.facility_recall, f.recall, 1e-12)
        assert _close(r.recall_gap, r.recall - f.recall, 1e-12)
        assert r.warning == (r.readmissions >= 100 and (abs(r.recall_gap) > 0.10
                                                        or not 0.8 <= r.observed_expected <= 1.25))
    # subgroups' discharges add up to the facility's, per dimension
    sums = equity.groupby(["facility_id", "period", "period_start", "cohort", "dimension"]).labelled.sum()
    for (f, p, start, cohort, _), n in sums.items():
        assert n == fac.loc[(f, p, start, cohort)].labelled

    daily = _query(url, "SELECT * FROM model_alert_share_daily")
    d = data.assign(day=pd.to_datetime(data.discharged_at, utc=True).dt.floor("D"))
    for r in daily.itertuples():
        g = d[(d.facility_id == r.facility_id) & (d.day == pd.Timestamp(r.day))]
        assert (r.scored, r.flagged) == (len(g), int(g.high_risk.sum()))
        assert (r.policy_budget, r.policy_lace_cold_start, r.policy_unknown) == (
            int((g.policy == "budget").sum()), int((g.policy == "lace_cold_start").sum()), int(g.policy.isna().sum()))
        assert _close(r.target_share, g.alert_share.mean() if g.alert_share.notna().any() else None, 1e-12)
    assert daily.scored.sum() == len(data)


def test_the_reader_sees_the_views_and_every_model_health_panel_has_rows(health_db) -> None:
    url, _ = health_db
    conn = reader_connection(url, settings().reader_password)
    try:
        cur = conn.cursor()
        for view in ("model_health_figures", "model_health_monthly", "model_health_90d", "model_equity",
                     "model_alert_share_daily", "v_model_health_labelled", "v_model_health_periods"):
            cur.execute(f"SELECT count(*) FROM {view}")
            assert cur.fetchone()[0] > 0, view
        board = model_health.board()
        start, end = START, START + timedelta(days=DAYS + 20)
        variables = resolve_variables(cur, board, start, end)
        assert variables[0].current == "F01"
        problems, empty = [], []
        for result in run_board(cur, board, start, end, variables):
            problems += [f"{result.panel.title}: {p}" for p in shape_problems(result)]
            if not result.rows:
                empty.append(result.panel.title)
        assert not problems, "\n".join(problems)
        assert not empty, f"panels without rows on the test data: {empty}"
    finally:
        conn.close()


def test_calibration_fit_is_null_where_the_fit_is_undefined(fresh_db) -> None:
    from consumers.migrate import migrate

    migrate()
    cases = [  # scores, labels -> {intercept, slope, calibration-in-the-large}
        ([0.1, 0.2, 0.3, 0.4], [False, False, True, True], (None, None, "fit")),  # separable
        ([0.2, 0.2, 0.2], [False, True, False], (None, None, math.log(0.5 / 0.25))),  # constant score
        ([0.1, 0.2], [True, True], (None, None, None)),  # one class
        ([], [], (None, None, None)),
    ]
    conn = psycopg2.connect(fresh_db)
    try:
        with conn.cursor() as cur:
            for scores, labels, want in cases:
                cur.execute("SELECT calibration_fit(%s::float8[], %s::boolean[])", (scores, labels))
                got = cur.fetchone()[0]
                assert got[:2] == list(want[:2]), (scores, labels, got)
                if want[2] == "fit":
                    s, y = np.array(scores), np.array(labels, dtype=float)
                    x = np.log(s / (1 - s))
                    assert _close(got[2], brentq(lambda c: float(np.sum(y - expit(c + x))), -40, 40), 1e-9)
                else:
                    assert _close(got[2], want[2], 1e-9), (scores, labels, got)
    finally:
        conn.close()
