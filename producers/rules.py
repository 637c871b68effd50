"""The realism rules of the simulator (pure functions of a seeded ``random.Random``; no I/O).

Every number here is a modelling choice anchored on DESIGN.md's reference figures (US all-payer
30-day readmission ~14%, mean stay ~4.5 days, mean inpatient cost ~$10k, surgical stays dearer).

Seasonality (DESIGN.md: "Cardiology, Oncology and Pediatrics peak in March, June, July and
February"). Three departments and four months can be read two ways (Oncology June-July and
Pediatrics February, or Oncology June and Pediatrics July and February); we meet both: Cardiology
peaks in March, Oncology in June and July, Pediatrics in February (RSV/flu season) and July (summer
injuries/camps). Each peak month's admissions are at least 15% above the department's own monthly
mean. Returns (readmissions, planned cycles) are not seasonal and dilute a peak, and February is
short, so the peak arrival factors sit well above 1.15.

The true 30-day readmission probability (:func:`p_readmit`) is a logistic function of features a
hospital can observe at discharge (age, chronic conditions, length of stay, acuity, prior ED visits
and admissions, discharge department, disposition, payer) plus an unobserved frailty term, so a
model on observable data cannot reach the true probability's AUC.

>>> round(p_readmit(age=70, n_chronic=2, conds=frozenset({"heart_failure", "diabetes"}),
...     los_days=6.0, emergent=True, prior_ed=1, prior_adm=1, department="Cardiology",
...     disposition="snf", payer="medicare", frailty=0.0), 3)
0.283
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from random import Random

from producers.drift import shifted_prevalence

# --------------------------------------------------------------------------- departments


@dataclass(frozen=True)
class Dept:
    share: float  # share of new (non-return) arrivals
    los_median: float  # days, lognormal
    los_sigma: float
    elective: float  # share of new arrivals that are elective
    cost_fixed: float  # USD per stay (procedures, implants, ED/ICU work-up)
    cost_per_day: float  # USD per day
    readmit_logit: float  # department effect on the true readmission logit
    death_logit: float  # department effect on in-hospital mortality
    primary_codes: tuple[str, ...]  # ICD-10-CM primary diagnoses
    procedures: tuple[str, ...]  # CPT
    season: tuple[float, ...]  # 12 monthly arrival factors


_FLAT = (1.0,) * 12
DEPT: dict[str, Dept] = {
    "Emergency": Dept(0.15, 2.6, 0.75, 0.0, 9500, 3600, 0.55, 0.9,
                      ("S06.0X0A", "R57.0", "A41.9", "T40.2X1A", "S72.001A", "J96.01", "R55"),
                      ("99291", "99285", "31500", "36556", "70450", "71045"),
                      (1.10, 1.05, 1.0, 0.97, 0.97, 0.98, 1.02, 1.0, 0.95, 0.95, 0.98, 1.05)),
    "Cardiology": Dept(0.13, 3.6, 0.65, 0.22, 6500, 1900, 0.12, 0.3,
                       ("I21.4", "I50.9", "I48.91", "I20.0", "I47.1", "R07.9"),
                       ("93458", "92928", "93306", "93000", "33208", "93010"),
                       (0.95, 0.96, 1.50, 0.95, 0.93, 0.93, 0.94, 0.94, 0.95, 0.96, 0.98, 1.0)),
    "Oncology": Dept(0.10, 5.0, 0.6, 0.30, 4000, 1500, 0.80, 1.1,
                     ("C34.90", "C50.919", "C18.9", "C61", "D70.1", "C91.00", "R50.81"),
                     ("96413", "96415", "77412", "38221", "36561", "96375"),
                     (0.90, 0.90, 0.90, 0.90, 0.90, 1.60, 1.50, 0.88, 0.88, 0.88, 0.88, 0.88)),
    "Orthopedics": Dept(0.11, 2.9, 0.55, 0.60, 18500, 1400, -0.75, -1.2,
                        ("M17.11", "M16.11", "S72.001A", "S82.201A", "M48.06", "S32.009A"),
                        ("27447", "27130", "27236", "22612", "29881", "20610"),
                        _FLAT),
    "Pediatrics": Dept(0.09, 2.2, 0.65, 0.10, 2400, 1300, -0.45, -1.8,
                       ("J21.0", "J18.9", "J45.901", "A08.4", "K35.80", "R56.00", "E10.10"),
                       ("99477", "94640", "99223", "71046", "44970", "96360"),
                       (1.0, 1.70, 0.95, 0.88, 0.85, 0.87, 1.55, 0.92, 0.87, 0.87, 0.90, 0.95)),
    "Internal Medicine": Dept(0.24, 3.8, 0.65, 0.04, 2600, 1450, 0.15, 0.2,
                              ("J18.9", "N39.0", "E87.1", "K92.2", "J44.1", "E86.0", "L03.90"),
                              ("99223", "99233", "94640", "36415", "71045", "96365"),
                              (1.15, 1.10, 1.0, 0.95, 0.92, 0.90, 0.90, 0.92, 0.95, 1.0, 1.05, 1.12)),
    "Neurology": Dept(0.08, 4.0, 0.65, 0.10, 4500, 1700, 0.0, 0.4,
                      ("I63.9", "G40.909", "G45.9", "G35", "R56.9", "G93.40"),
                      ("70551", "95819", "70496", "37195", "62270", "95816"),
                      _FLAT),
    "Surgery": Dept(0.10, 3.8, 0.65, 0.45, 8000, 1500, -0.2, -0.3,
                    ("K35.80", "K80.10", "K56.609", "K40.90", "K57.20", "C18.9"),
                    ("44970", "47562", "49505", "44140", "44120", "49650"),
                    _FLAT),
}


def mean_los_days(department: str) -> float:
    d = DEPT[department]
    return d.los_median * math.exp(d.los_sigma**2 / 2)


def peak_factor(department: str) -> float:
    return max(DEPT[department].season)


BED_LOAD: dict[str, float] = {
    "Emergency": 1.55, "Internal Medicine": 1.2, "Oncology": 1.3, "Pediatrics": 1.0,
    "Cardiology": 1.2, "Orthopedics": 1.05, "Neurology": 1.05, "Surgery": 1.05,
}
"""Relative bed need beyond new arrivals (readmissions come back through Emergency and Internal
Medicine; oncology has planned returns), tuned on simulated years; used to split the beds."""


PEAK_MONTHS: dict[str, tuple[int, ...]] = {
    "Cardiology": (3,), "Oncology": (6, 7), "Pediatrics": (2, 7)
}
"""The seasonal peaks DESIGN.md asks for (month numbers), as read above."""

# --------------------------------------------------------------------------- conditions

CONDITION_CODES: dict[str, str] = {
    "hypertension": "I10",
    "diabetes": "E11.9",
    "heart_failure": "I50.9",
    "copd": "J44.9",
    "ckd": "N18.3",
    "cad": "I25.10",
    "cancer": "C34.90",  # C50.919 for breast cancer (see population)
    "dementia": "F03.90",
    "stroke": "I63.9",
    "liver_disease": "K70.30",
    "obesity": "E66.9",
    "asthma": "J45.909",
    "afib": "I48.91",
    "depression": "F32.9",
}

# prevalence among adults under 65 and 65+, before the department boost
PREVALENCE: dict[str, tuple[float, float]] = {
    "hypertension": (0.28, 0.60),
    "diabetes": (0.14, 0.27),
    "heart_failure": (0.03, 0.14),
    "copd": (0.05, 0.14),
    "ckd": (0.04, 0.16),
    "cad": (0.05, 0.20),
    "cancer": (0.03, 0.08),
    "dementia": (0.0, 0.08),
    "stroke": (0.02, 0.07),
    "liver_disease": (0.03, 0.03),
    "obesity": (0.22, 0.15),
    "asthma": (0.08, 0.05),
    "afib": (0.02, 0.12),
    "depression": (0.10, 0.08),
}

DEPT_CONDITION_BOOST: dict[str, dict[str, float]] = {
    "Cardiology": {"heart_failure": 0.25, "cad": 0.25, "afib": 0.15, "hypertension": 0.15},
    "Oncology": {"cancer": 0.90},
    "Neurology": {"stroke": 0.20, "dementia": 0.08},
    "Internal Medicine": {"diabetes": 0.10, "copd": 0.10, "ckd": 0.08, "heart_failure": 0.05},
    "Emergency": {"liver_disease": 0.04, "copd": 0.04},
    "Orthopedics": {"obesity": 0.10},
}

MAJOR = frozenset(
    {"diabetes", "heart_failure", "copd", "ckd", "cad", "cancer", "dementia", "stroke", "liver_disease"}
)
"""Conditions that raise readmission risk (Charlson-relevant, plus more specific effects below)."""

_COND_LOGIT = {"heart_failure": 0.30, "ckd": 0.20, "cancer": 0.25, "diabetes": 0.70, "copd": 0.20,
               "dementia": 0.15, "liver_disease": 0.25}
_COND_LOGIT_ITEMS = tuple(_COND_LOGIT.items())


_PREV_TABLE: dict[tuple[str, bool], tuple[tuple[str, float], ...]] = {
    (dept, old): tuple((name, (o if old else y) + DEPT_CONDITION_BOOST.get(dept, {}).get(name, 0.0))
                       for name, (y, o) in PREVALENCE.items())
    for dept in DEPT for old in (False, True)
}


_PREV_TABLE_SHIFTED: dict[tuple[str, bool], tuple[tuple[str, float], ...]] = {
    key: tuple((name, shifted_prevalence(p)) for name, p in table) for key, table in _PREV_TABLE.items()
}
"""The same after a case-mix shift (``producers.drift``): a sicker population."""


def sample_conditions(rng: Random, age: int, department: str, shifted: bool = False) -> list[str]:
    """Chronic conditions of a new patient (children: asthma only, rarely)."""
    if age < 18:
        return ["asthma"] if rng.random() < 0.12 else []
    r = rng.random
    table = _PREV_TABLE_SHIFTED if shifted else _PREV_TABLE
    return [name for name, p in table[department, age >= 65] if r() < p]


# --------------------------------------------------------------------------- admission & stay

def season(department: str, month: int) -> float:
    return DEPT[department].season[month - 1]


def sample_los_days(rng: Random, department: str, age: int, frailty: float, emergent: bool) -> float:
    d = DEPT[department]
    mult = (1.15 if age >= 65 else 1.0) * math.exp(0.12 * frailty) * (1.08 if emergent else 0.95)
    los = rng.lognormvariate(math.log(d.los_median * mult), d.los_sigma)
    return min(max(los, 0.17), 60.0)


def sample_cost(rng: Random, department: str, los_days: float, n_procedures: int) -> float:
    """Total cost of a stay: fixed + per-day, heavy-tailed (complications, ICU days)."""
    d = DEPT[department]
    base = d.cost_fixed * (0.6 + 0.2 * n_procedures) + d.cost_per_day * los_days
    return round(0.75 * base * rng.lognormvariate(-0.25, 0.7), 2)


def death_probability(age: int, frailty: float, department: str, n_chronic: int) -> float:
    x = -5.3 + 0.035 * (age - 60) + 0.55 * frailty + 0.12 * n_chronic + DEPT[department].death_logit
    return 1.0 / (1.0 + math.exp(-x))


def sample_disposition(rng: Random, age: int, frailty: float, department: str, n_chronic: int,
                       payer: str) -> str:
    if rng.random() < death_probability(age, frailty, department, n_chronic):
        return "expired"
    if rng.random() < (0.035 if payer in ("uninsured", "medicaid") and age < 65 else 0.01):
        return "ama"
    u = rng.random()
    if age >= 75:
        return "snf" if u < 0.28 else "home_health" if u < 0.50 else "rehab" if u < 0.56 else "home"
    if department in ("Orthopedics", "Neurology"):
        return "rehab" if u < 0.22 else "home_health" if u < 0.40 else "snf" if u < 0.46 else "home"
    if age >= 65:
        return "snf" if u < 0.12 else "home_health" if u < 0.30 else "home"
    return "home_health" if u < 0.08 else "home"


def satisfaction(rng: Random, department: str, month: int, los_days: float, disposition: str) -> float | None:
    """0-100, or None for a non-responder (~40%). Orthopedics drops after July (staffing change)."""
    if disposition == "expired" or rng.random() < 0.40:
        return None
    mean = 76.0 - 0.4 * min(los_days, 20.0) - (8.0 if disposition == "ama" else 0.0)
    if department == "Orthopedics" and month > 7:
        mean *= 0.86
    return float(round(min(100.0, max(0.0, rng.gauss(mean, 11.0))), 1))


# --------------------------------------------------------------------------- readmission

_DISPO_LOGIT = {"home": 0.0, "home_health": 0.10, "snf": 0.25, "rehab": 0.0, "ama": 0.70, "expired": 0.0}
_PAYER_LOGIT = {"medicare": 0.0, "medicaid": 0.25, "private": -0.30, "uninsured": 0.15}
FRAILTY_WEIGHT = 0.4
INTERCEPT = -3.72


def readmit_logit(*, age: int, n_chronic: int, conds: frozenset[str], los_days: float,
                  emergent: bool, prior_ed: int, prior_adm: int, department: str,
                  disposition: str, payer: str, frailty: float) -> float:
    return _logit(age, n_chronic, conds, los_days, emergent, prior_ed, prior_adm, department,
                  disposition, payer, frailty)


def _logit(age: int, n_chronic: int, conds: frozenset[str], los_days: float, emergent: bool,
           prior_ed: int, prior_adm: int, department: str, disposition: str, payer: str,
           frailty: float) -> float:
    x = INTERCEPT
    if age >= 65:
        x += 0.55
    if age >= 80:
        x += 0.20
    if age < 18:
        x -= 0.30
    x += 0.08 * min(n_chronic, 5)
    for c, w in _COND_LOGIT_ITEMS:  # a fixed order: float sums must not follow set (hash) order
        if c in conds:
            x += w
    x += 0.15 * math.log1p(los_days)
    if emergent:
        x += 0.20
    x += 0.12 * min(prior_ed, 4) + 0.10 * min(prior_adm, 5)
    x += DEPT[department].readmit_logit + _DISPO_LOGIT[disposition] + _PAYER_LOGIT[payer]
    return x + FRAILTY_WEIGHT * frailty


def p_readmit(*, age: int, n_chronic: int, conds: frozenset[str], los_days: float,
              emergent: bool, prior_ed: int, prior_adm: int, department: str,
              disposition: str, payer: str, frailty: float) -> float:
    """True 30-day readmission probability at discharge (0 for an expired patient)."""
    return p_readmit_fast(age, n_chronic, conds, los_days, emergent, prior_ed, prior_adm, department,
                          disposition, payer, frailty)


def p_readmit_fast(age: int, n_chronic: int, conds: frozenset[str], los_days: float, emergent: bool,
                   prior_ed: int, prior_adm: int, department: str, disposition: str, payer: str,
                   frailty: float) -> float:
    """:func:`p_readmit` with positional arguments (the simulator's hot loop)."""
    if disposition == "expired":
        return 0.0
    x = _logit(age, n_chronic, conds, los_days, emergent, prior_ed, prior_adm, department,
               disposition, payer, frailty)
    return 1.0 / (1.0 + math.exp(-x))


def readmission_delay_days(rng: Random) -> float:
    """Days from discharge to a readmission: front-loaded (a third in the first week), < 30."""
    return 0.4 + 29.4 * rng.random() ** 1.5


_PLANNED_RETURN = {"Oncology": 0.14, "Orthopedics": 0.06, "Surgery": 0.05, "Cardiology": 0.05}


def later_admission(rng: Random, department: str, frailty: float, n_chronic: int,
                    diabetic: bool) -> tuple[float, bool] | None:
    """An unrelated later admission for a patient not readmitted: (delay days, elective) or None.

    Planned returns within 30 days are elective (staged surgery, chemotherapy cycles), so they
    are not readmissions; other returns come after 30 days and may be non-elective.
    """
    planned = _PLANNED_RETURN.get(department, 0.02)
    if rng.random() < planned:
        return 5.0 + 22.0 * rng.random(), True
    late = 0.10 + 0.05 * min(n_chronic, 4) + 0.05 * max(frailty, 0.0) + (0.08 if diabetic else 0.0)
    if rng.random() < late:
        return 30.5 + 100.0 * rng.random() ** 1.3, rng.random() < 0.25
    return None
