"""LACE index for 30-day readmission or death (van Walraven et al., CMAJ 2010; c = 0.684).

L  length of stay in whole days (floored): <1: 0, 1: 1, 2: 2, 3: 3, 4-6: 4, 7-13: 5, >=14: 7
A  acute admission: 3 when the admission was not elective. Van Walraven's "acute (emergent)
   admission" means unplanned; our contract has ``emergency`` and ``urgent`` (both unplanned, CMS
   counts both as non-elective) and ``elective``, so both non-elective types score 3.
C  Charlson index: 0-3 as is, >=4: 5
E  emergency-department visits in the 6 months before admission: 1 each, at most 4

Range 0-19; >= 10 is the usual high-risk cut-off.

>>> lace_points(5.2, "emergency", 2, 1)
{'L': 4, 'A': 3, 'C': 2, 'E': 1}
>>> lace_index(14.0, "urgent", 6, 9)
19
>>> lace_index(0.4, "elective", 0, 0)
0
"""

from __future__ import annotations

import math

HIGH_RISK_LACE = 10
NON_ELECTIVE: frozenset[str] = frozenset({"emergency", "urgent"})


def length_points(los_days: float) -> int:
    """L points from a length of stay in (fractional) days, floored to whole days."""
    if los_days < 0 or math.isnan(los_days):
        raise ValueError(f"length of stay must be >= 0, got {los_days!r}")
    d = math.floor(los_days)
    if d < 4:
        return d
    if d <= 6:
        return 4
    if d <= 13:
        return 5
    return 7


def acuity_points(admission_type: str) -> int:
    return 3 if admission_type in NON_ELECTIVE else 0


def comorbidity_points(charlson: int) -> int:
    if charlson < 0:
        raise ValueError(f"Charlson index must be >= 0, got {charlson!r}")
    return charlson if charlson <= 3 else 5


def ed_points(ed_visits_6m: int) -> int:
    if ed_visits_6m < 0:
        raise ValueError(f"ED visit count must be >= 0, got {ed_visits_6m!r}")
    return min(ed_visits_6m, 4)


def lace_points(los_days: float, admission_type: str, charlson: int, ed_visits_6m: int) -> dict[str, int]:
    """The four LACE components, keyed ``L``, ``A``, ``C``, ``E``."""
    return {
        "L": length_points(los_days),
        "A": acuity_points(admission_type),
        "C": comorbidity_points(charlson),
        "E": ed_points(ed_visits_6m),
    }


def lace_index(los_days: float, admission_type: str, charlson: int, ed_visits_6m: int) -> int:
    """LACE index, 0-19."""
    return sum(lace_points(los_days, admission_type, charlson, ed_visits_6m).values())
