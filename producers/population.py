"""Simulated patients: demographics, payer, chronic conditions and a hidden frailty term (pure).

A patient is drawn on their first admission, conditional on the department they arrive in
(cardiology patients are older and more often have heart failure, ...). ``frailty`` is a standard
normal term that raises readmission and mortality risk but appears in no event: it is the part of
the true risk that no model fed with the events can see.

>>> from random import Random
>>> p = new_patient(Random(1), 7, "Cardiology")
>>> p.patient_id, p.info["age"] >= 18, set(p.info) == {"age", "sex", "race", "payer", "chronic_conditions"}
('P0000007', True, True)
"""

from __future__ import annotations

from random import Random

from producers import drift
from producers.rules import CONDITION_CODES, MAJOR, sample_conditions

RACES = ("white", "black", "hispanic", "asian", "other")
RACE_WEIGHTS = (0.60, 0.13, 0.18, 0.06, 0.03)
_RACE_CUM = (0.60, 0.73, 0.91, 0.97, 1.01)

# (mean, sd) of adult ages per department; Pediatrics is 0-17
AGE: dict[str, tuple[float, float]] = {
    "Emergency": (54, 20), "Cardiology": (68, 12), "Oncology": (64, 12), "Orthopedics": (63, 15),
    "Internal Medicine": (64, 17), "Neurology": (64, 16), "Surgery": (53, 17),
}


class Patient:
    """One patient and their simulator-side history (mutable; not an event)."""

    __slots__ = ("patient_id", "facility", "info", "age", "payer", "conds", "n_chronic", "codes",
                 "frailty", "alive", "busy", "last_discharge", "ed_times", "adm_times")

    def __init__(self, patient_id: str, facility: int, age: int, sex: str, race: str, payer: str,
                 conds: list[str], frailty: float, cancer_code: str) -> None:
        self.patient_id = patient_id
        self.facility = facility
        self.age = age
        self.payer = payer
        self.conds = cs = frozenset(conds)
        self.n_chronic = len(MAJOR & cs) + ("hypertension" in cs)
        self.codes = tuple([cancer_code if c == "cancer" else CONDITION_CODES[c] for c in conds])
        self.frailty = frailty
        # the ``patient`` object of admission events, built once and shared
        self.info = {"age": age, "sex": sex, "race": race, "payer": payer, "chronic_conditions": conds}
        self.alive = True
        self.busy = False  # in hospital or with a scheduled admission
        self.last_discharge = -10**12
        self.ed_times: list[int] = []  # admission times with admit_source "ed"
        self.adm_times: list[int] = []


def sample_age(rng: Random, department: str, shifted: bool = False) -> int:
    if department == "Pediatrics":
        return 0 if rng.random() < 0.25 else rng.randint(1, 17)
    mean, sd = AGE[department]
    if shifted:
        mean += drift.AGE_YEARS
    return int(min(100, max(18, rng.gauss(mean, sd))))


def sample_payer(rng: Random, age: int) -> str:
    u = rng.random()
    if age >= 65:
        return "medicare" if u < 0.90 else "private" if u < 0.96 else "medicaid" if u < 0.985 else "uninsured"
    if age < 18:
        return "medicaid" if u < 0.44 else "private" if u < 0.94 else "uninsured"
    return "private" if u < 0.60 else "medicaid" if u < 0.76 else "uninsured" if u < 0.965 else "medicare"


def new_patient(rng: Random, number: int, department: str, facility: int = 0,
                shifted: bool = False) -> Patient:
    """A new patient; ``shifted``: drawn from the case mix after a ``case-mix`` drift (older, sicker)."""
    age = sample_age(rng, department, shifted)
    sex = "F" if rng.random() < 0.54 else "M"
    u = rng.random()
    race = next(r for r, c in zip(RACES, _RACE_CUM) if u < c)
    payer = sample_payer(rng, age)
    conds = sample_conditions(rng, age, department, shifted)
    frailty = rng.gauss(drift.FRAILTY_MEAN if shifted else 0.0, 1.0)
    cancer_code = "C50.919" if sex == "F" and rng.random() < 0.5 else "C34.90"
    return Patient(f"P{number:07d}", facility, age, sex, race, payer, conds, frailty, cancer_code)
