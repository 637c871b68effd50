"""Drift scenarios of the simulator (``--shift-at DATE --shift KIND``): what changes from DATE on. Pure.

Two realistic kinds of change, which a readmission model meets in practice:

``case-mix`` (a neighbouring hospital closes its acute medical service; its catchment, older and
sicker, arrives through our emergency department): new patients are on average ``AGE_YEARS``
older, carry each chronic condition ``PREVALENCE_X`` times as often, are frailer (the hidden term,
so the true risk rises beyond what the events show), come in as elective admissions
``ELECTIVE_X`` times as often and, when unplanned, through the emergency department more often.
Their true readmission probability follows from the same rules as before (the truth file keeps its
meaning); prior admissions and ED visits rise on their own as these patients come back.

``coding`` (a clinical documentation improvement programme: discharges are coded to full
specificity): from DATE, each discharge abstract also carries the complications and combination codes
the chronic conditions imply, as ICD-10-CM asks: diabetes with CKD is E11.22 (the "with" convention),
most other diabetics get their complication coded (neuropathy, PVD), half the cancers their
metastatic spread (C79.9) and some coronary disease an old infarction (I25.2). The patients are the
same, so the true probability does not move, but the Charlson index computed from the codes does
(diabetes with complications weighs 2, metastatic cancer 6, old MI 1). On its own a subtler drift
than ``case-mix`` (PSI between the 28 days before and after, 300 beds, seeds 1-3, 11 and 42: Charlson
0.14-0.23; under ``case-mix`` the chronic-condition count 0.40-0.54, age 0.21-0.27, the true
probability 0.13-0.19; under ``both`` Charlson 0.36-0.49). A patient's coded complications are
stable across stays (drawn from a stream seeded by the run's seed and the patient id, never from
the simulation's own stream).

``both``: the two together. Without a shift nothing here runs: same seed, same events as ever.

>>> shift = Shift.parse("coding")
>>> shift.case_mix, shift.coding
(False, True)
>>> complete_codes(7, "P0000001", frozenset({"diabetes", "ckd"}), ["E11.9", "N18.3"])
['E11.9', 'N18.3', 'E11.22']
>>> complete_codes(7, "P0000001", frozenset({"hypertension"}), ["I10"])
['I10']
"""

from __future__ import annotations

from dataclasses import dataclass
from random import Random

KINDS = ("case-mix", "coding", "both")

AGE_YEARS = 11.0  # mean age of adult new arrivals, added
PREVALENCE_X = 1.6  # chronic-condition prevalence, multiplied (capped at MAX_PREVALENCE)
MAX_PREVALENCE = 0.95
FRAILTY_MEAN = 0.4  # mean of the hidden frailty term (0 before the shift)
ELECTIVE_X = 0.5  # elective share of new arrivals, multiplied
ED_SHARE = 0.88  # unplanned arrivals (outside Emergency) admitted through the ED (0.70 before)

DIABETES_COMPLICATION_P = 0.6  # diabetics without CKD whose complication gets coded
DIABETES_COMPLICATIONS = ("E11.40", "E11.51")  # neuropathy, peripheral angiopathy
METASTATIC_P = 0.5  # cancer patients with (now coded) metastatic disease
OLD_MI_P = 0.4  # coronary artery disease patients with a (now coded) old myocardial infarction


@dataclass(frozen=True)
class Shift:
    """What changes from the shift date on."""

    case_mix: bool
    coding: bool

    @classmethod
    def parse(cls, kind: str) -> Shift:
        if kind not in KINDS:
            raise ValueError(f"shift must be one of {', '.join(KINDS)}, not {kind!r}")
        return cls(case_mix=kind != "coding", coding=kind != "case-mix")


def shifted_prevalence(p: float) -> float:
    """A chronic condition's prevalence among the shifted case mix."""
    return min(MAX_PREVALENCE, p * PREVALENCE_X)


def complete_codes(seed: int, patient_id: str, conds: frozenset[str], codes: list[str]) -> list[str]:
    """``codes`` plus what complete coding adds for a patient with chronic conditions ``conds``."""
    extra: list[str] = []
    if "diabetes" in conds or "cancer" in conds or "cad" in conds:
        rng = Random(f"coding-{seed}-{patient_id}")  # the patient's own, stable across stays
        diabetic_u, complication_u, cancer_u, mi_u = rng.random(), rng.random(), rng.random(), rng.random()
        if "diabetes" in conds:
            if "ckd" in conds:
                extra.append("E11.22")
            elif diabetic_u < DIABETES_COMPLICATION_P:
                extra.append(DIABETES_COMPLICATIONS[int(complication_u * len(DIABETES_COMPLICATIONS))])
        if "cancer" in conds and cancer_u < METASTATIC_P:
            extra.append("C79.9")
        if "cad" in conds and mi_u < OLD_MI_P:
            extra.append("I25.2")
    return codes + [c for c in extra if c not in codes]
