"""Discharge features: fixed keys, deterministic values, each family computed as documented."""

from __future__ import annotations

import math

from contracts.events import DEPARTMENTS
from stream.domain import patient as pt
from stream.domain.examples import admission, discharge, transfer
from stream.domain.features import FEATURE_NAMES, FEATURE_TEXT, discharge_features, feature_text
from stream.domain.patient import PendingDischarge

T_IN, T_OUT = "2025-05-01T06:00:00+00:00", "2025-05-06T18:00:00+00:00"


def ctx_for(**adm_kw):
    dis_kw = adm_kw.pop("dis", {})
    s, _ = pt.apply_admission(None, admission("P1", "E1", T_IN, **adm_kw))
    _, ctx = pt.apply_discharge(s, discharge("P1", "E1", T_IN, T_OUT, **dis_kw))
    return ctx


def test_keys_fixed_and_values_deterministic() -> None:
    a = discharge_features(ctx_for())
    b = discharge_features(ctx_for())
    assert a == b and list(a) == list(FEATURE_NAMES)
    assert all(isinstance(v, float) and math.isfinite(v) for v in a.values())
    assert set(FEATURE_TEXT) == set(FEATURE_NAMES)
    for d in DEPARTMENTS:
        assert any(d in FEATURE_TEXT[k] for k in FEATURE_NAMES if k.startswith("dept_"))


def test_one_hots_and_flags() -> None:
    x = discharge_features(ctx_for(
        age=82, sex="M", admission_type="urgent", admit_source="transfer", payer="medicaid",
        chronic_conditions=["copd", "ckd", "something_rare"],
        vitals={"systolic_bp": 85, "diastolic_bp": 50, "heart_rate": 120, "glucose_mg_dl": 250},
        diagnosis_codes=["J44.1", "N18.3"],
        dis={"department": "Oncology", "disposition": "snf", "payer": "medicaid",
             "procedure_codes": ["96413", "36561"], "diagnosis_codes": ["J44.1", "C78.00"]},
    ))
    ones = {k for k, v in x.items() if v == 1.0}
    assert {"age_65_plus", "age_80_plus", "sex_male", "payer_medicaid", "dept_oncology", "admission_urgent",
            "admit_source_transfer", "chronic_copd", "chronic_ckd", "disposition_snf", "vitals_hypotension",
            "vitals_tachycardia", "vitals_hyperglycemia"} <= ones
    for family in ("payer_", "dept_", "admission_", "admit_source_", "disposition_"):
        assert sum(v for k, v in x.items() if k.startswith(family)) == 1.0, family
    assert x["vitals_hypertension"] == 0.0 and x["vitals_hypoglycemia"] == 0.0 and x["age_under_18"] == 0.0
    assert x["n_chronic"] == 3.0  # the unknown name counts, without a flag of its own
    assert x["charlson"] == 1 + 2 + 6  # copd + renal + metastatic
    assert x["n_diagnoses"] == 3.0 and x["n_procedures"] == 2.0
    assert x["los_log1p"] == math.log1p(5.5)
    assert x["age"] == 82.0


def test_history_counts_and_transfer_department() -> None:
    s = None
    for i, day in enumerate(["2025-01-05", "2025-02-10", "2025-03-20"]):
        t = f"{day}T00:00:00+00:00"
        s, _ = pt.apply_admission(s, admission("P1", f"E{i}", t, admit_source="ed" if i else "referral"))
        s, _ = pt.apply_discharge(s, discharge("P1", f"E{i}", t, f"{day}T12:00:00+00:00"))
    s, _ = pt.apply_admission(s, admission("P1", "E9", T_IN, department="Emergency"))
    s = pt.apply_transfer(s, transfer("P1", "E9", "2025-05-02T00:00:00+00:00", department="Neurology"))
    _, ctx = pt.apply_discharge(s, discharge("P1", "E9", T_IN, T_OUT, department="Neurology"))
    x = discharge_features(ctx)
    assert x["prior_admissions_12m"] == 3.0 and x["ed_visits_6m"] == 2.0
    assert x["dept_neurology"] == 1.0 and x["dept_emergency"] == 0.0


def test_texts_are_plain_words() -> None:
    assert feature_text("prior_admissions_12m", 3.0) == "admitted 3 times in the past 12 months"
    assert feature_text("los_log1p", math.log1p(6.0)) == "stayed 6.0 days"
    assert feature_text("dept_oncology", 1.0) == "discharged from Oncology"
    assert feature_text("unknown_feature", 2.0) == "unknown feature 2"
    for name in FEATURE_NAMES:
        text = feature_text(name, 1.0)
        assert text and "{" not in text and "_" not in text


def test_history_features() -> None:
    s = None
    day = "2025-04-{:02d}T00:00:00+00:00"
    s, _ = pt.apply_admission(s, admission("P1", "E0", day.format(1)))
    s, _ = pt.apply_discharge(s, discharge("P1", "E0", day.format(1), day.format(3)))
    s = pt.add_pending(s, PendingDischarge("E0", "P1", "F01", "Internal Medicine", "D1",
                                           discharge("P1", "E0", day.format(1), day.format(3)).occurred_at,
                                           {}, 0.2, 5, 0.3, False))
    s, outcomes = pt.apply_admission(s, admission("P1", "E1", day.format(20)))
    assert outcomes[0].readmitted
    _, ctx = pt.apply_discharge(s, discharge("P1", "E1", day.format(20), day.format(24)))
    x = discharge_features(ctx)
    assert x["readmission_stay"] == 1.0 and x["prior_discharge_90d"] == 1.0
    assert x["prior_readmissions_12m"] == 0.0  # E1 is the readmission itself, not a prior one
    first = discharge_features(ctx_for())
    assert first["readmission_stay"] == first["prior_discharge_90d"] == 0.0
