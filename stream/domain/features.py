"""The feature vector of a discharge: what a hospital knows when the patient leaves.

Deterministic: the same context gives the same dict with the same keys in the same order, and
every key of ``FEATURE_NAMES`` is always present (one-hots are explicit zeros), so the scaler sees
a fixed-width vector and top factors are comparable between discharges.

Only data from the events feed the features (no names, no free text): demographics, payer,
department and acuity, length of stay, Charlson index, chronic conditions, the patient's prior
admissions (12 months) and ED visits (6 months), disposition, abnormal admission vitals, and the
number of diagnoses and procedures. Three history features go beyond that list: whether this stay
was itself an unplanned readmission, a discharge in the 90 days before it, and the readmissions of
the past 12 months. They proxy what no event states (frailty, poor self-care): a patient who keeps
coming back is likely to come back again.

>>> from stream.domain.examples import admission, discharge
>>> from stream.domain.patient import apply_admission, apply_discharge
>>> s, _ = apply_admission(None, admission("P1", "E1", "2025-01-01T00:00:00Z", age=81,
...                                         chronic_conditions=["heart_failure", "diabetes"]))
>>> _, ctx = apply_discharge(s, discharge("P1", "E1", "2025-01-01T00:00:00Z", "2025-01-06T00:00:00Z"))
>>> x = discharge_features(ctx)
>>> list(x) == list(FEATURE_NAMES), x["age_65_plus"], x["n_chronic"], x["chronic_heart_failure"]
(True, 1.0, 2.0, 1.0)
>>> FEATURE_TEXT["prior_admissions_12m"].format(value=3.0)
'admitted 3 times in the past 12 months'
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

from contracts.events import DEPARTMENTS
from stream.domain.patient import DischargeContext

PAYERS = ("medicare", "medicaid", "private", "uninsured")
ADMISSION_TYPES = ("emergency", "urgent", "elective")
ADMIT_SOURCES = ("ed", "referral", "transfer")
DISPOSITIONS = ("home", "home_health", "snf", "rehab", "ama", "expired")
# chronic conditions with their own flag (names as the simulator and ADT feeds spell them);
# any other name still counts in ``n_chronic``.
CHRONIC_CONDITIONS = (
    "hypertension", "diabetes", "heart_failure", "copd", "ckd", "cad", "cancer", "dementia",
    "stroke", "liver_disease", "obesity", "asthma", "afib", "depression",
)
# abnormal vitals at admission (adult cut-offs; flags, not values, so one outlier cannot dominate)
HYPOTENSION_SBP = 90.0
HYPERTENSION_SBP, HYPERTENSION_DBP = 180.0, 110.0
TACHYCARDIA_HR = 100.0
HYPERGLYCEMIA, HYPOGLYCEMIA = 180.0, 70.0
COUNT_CAP = 10  # prior admissions / ED visits beyond this add no information, only leverage


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


FEATURE_TEXT: dict[str, str] = {
    "age": "age {value:.0f}",
    "age_65_plus": "aged 65 or over",
    "age_80_plus": "aged 80 or over",
    "age_under_18": "a child",
    "sex_male": "male",
    **{f"payer_{p}": f"payer: {p}" for p in PAYERS},
    **{f"dept_{_slug(d)}": f"discharged from {d}" for d in DEPARTMENTS},
    **{f"admission_{a}": f"{a} admission" for a in ADMISSION_TYPES},
    "admit_source_ed": "admitted through the emergency department",
    "admit_source_referral": "admitted on referral",
    "admit_source_transfer": "transferred in from another facility",
    "los_log1p": "stayed {days:.1f} days",
    "charlson": "Charlson comorbidity index {value:.0f}",
    "n_chronic": "{value:.0f} chronic conditions",
    **{f"chronic_{c}": "chronic condition: " + c.replace("_", " ") for c in CHRONIC_CONDITIONS},
    "prior_admissions_12m": "admitted {value:.0f} times in the past 12 months",
    "ed_visits_6m": "{value:.0f} emergency visits in the past 6 months",
    "readmission_stay": "this stay was itself an unplanned readmission",
    "prior_discharge_90d": "discharged from hospital in the 90 days before this stay",
    "prior_readmissions_12m": "readmitted {value:.0f} times in the past 12 months",
    "disposition_home": "discharged home",
    "disposition_home_health": "discharged home with home health care",
    "disposition_snf": "discharged to a skilled nursing facility",
    "disposition_rehab": "discharged to rehabilitation",
    "disposition_ama": "left against medical advice",
    "disposition_expired": "died in hospital",
    "vitals_hypotension": "low blood pressure at admission",
    "vitals_hypertension": "very high blood pressure at admission",
    "vitals_tachycardia": "fast heart rate at admission",
    "vitals_hyperglycemia": "high blood glucose at admission",
    "vitals_hypoglycemia": "low blood glucose at admission",
    "n_diagnoses": "{value:.0f} diagnoses coded",
    "n_procedures": "{value:.0f} procedures",
}
FEATURE_NAMES: tuple[str, ...] = tuple(FEATURE_TEXT)


def feature_text(name: str, value: float) -> str:
    """Plain words for one feature value (``los_log1p`` is shown back in days)."""
    template = FEATURE_TEXT.get(name, name.replace("_", " ") + " {value:g}")
    return template.format(value=value, days=math.expm1(value))


def dense(x: Mapping[str, float]) -> dict[str, float]:
    """Every feature in ``FEATURE_NAMES`` order, 0.0 where ``x`` has none: the patient state
    stores only a discharge's non-zero features, and the model must see all of them, in the
    order it scored them (a float sum's order changes its last bits).

    >>> list(dense({"age_65_plus": 1.0, "age": 70}).items())[:3]
    [('age', 70.0), ('age_65_plus', 1.0), ('age_80_plus', 0.0)]
    """
    return {name: float(x.get(name, 0.0)) for name in FEATURE_NAMES}


def _flag(cond: bool) -> float:
    return 1.0 if cond else 0.0


def discharge_features(ctx: DischargeContext) -> dict[str, float]:
    """The feature dict of one discharge (keys = ``FEATURE_NAMES``, in that order)."""
    o, d = ctx.open, ctx.discharge
    x = dict.fromkeys(FEATURE_NAMES, 0.0)
    x["age"] = float(o.age)
    x["age_65_plus"] = _flag(o.age >= 65)
    x["age_80_plus"] = _flag(o.age >= 80)
    x["age_under_18"] = _flag(o.age < 18)
    x["sex_male"] = _flag(o.sex == "M")
    payer = d.payer or o.payer
    if f"payer_{payer}" in x:
        x[f"payer_{payer}"] = 1.0
    dept = f"dept_{_slug(d.department)}"
    if dept in x:
        x[dept] = 1.0
    if f"admission_{o.admission_type}" in x:
        x[f"admission_{o.admission_type}"] = 1.0
    if f"admit_source_{o.admit_source}" in x:
        x[f"admit_source_{o.admit_source}"] = 1.0
    x["los_log1p"] = math.log1p(max(d.length_of_stay_days, 0.0))
    x["charlson"] = float(ctx.charlson)
    conds = set(o.chronic_conditions)
    x["n_chronic"] = float(len(conds))
    for c in conds:
        if f"chronic_{c}" in x:
            x[f"chronic_{c}"] = 1.0
    x["prior_admissions_12m"] = float(min(ctx.prior_admissions_12m, COUNT_CAP))
    x["ed_visits_6m"] = float(min(ctx.ed_visits_6m, COUNT_CAP))
    gap = ctx.days_since_last_discharge
    x["readmission_stay"] = _flag(gap is not None and gap <= 30 and o.admission_type != "elective")
    x["prior_discharge_90d"] = _flag(gap is not None and gap <= 90)
    x["prior_readmissions_12m"] = float(min(ctx.readmissions_12m, COUNT_CAP))
    x[f"disposition_{d.discharge_disposition}"] = 1.0
    v = o.vitals
    sbp, dbp = v.get("systolic_bp", 120.0), v.get("diastolic_bp", 80.0)
    x["vitals_hypotension"] = _flag(sbp < HYPOTENSION_SBP)
    x["vitals_hypertension"] = _flag(sbp >= HYPERTENSION_SBP or dbp >= HYPERTENSION_DBP)
    x["vitals_tachycardia"] = _flag(v.get("heart_rate", 80.0) > TACHYCARDIA_HR)
    glucose = v.get("glucose_mg_dl", 100.0)
    x["vitals_hyperglycemia"] = _flag(glucose > HYPERGLYCEMIA)
    x["vitals_hypoglycemia"] = _flag(glucose < HYPOGLYCEMIA)
    x["n_diagnoses"] = float(len(set(o.diagnosis_codes) | set(d.diagnosis_codes)))
    x["n_procedures"] = float(len(d.procedure_codes))
    return x
