"""Reference data of the simulated hospitals: facilities, departments with beds, providers.

Pure (no I/O). Beds are split across departments in proportion to each department's expected
patient-days at its seasonal peak, so a peak month fills a department without overflowing it.
Names come from Faker seeded with the simulation seed: they are reference data only and never
enter the per-event loop.

>>> ref = build_reference(seed=42, facilities=1, beds=300)
>>> ref.facilities[0].facility_id, sum(ref.facilities[0].department_beds.values())
('F01', 300)
>>> ref.providers[0].provider_id
'F01-D001'
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from faker import Faker

from producers import rules
from contracts.events import DEPARTMENTS, FacilityRef, ProviderRef

MIN_BEDS_PER_DEPARTMENT = 4
MIN_BEDS = MIN_BEDS_PER_DEPARTMENT * len(DEPARTMENTS) * 2
MAX_FACILITIES = 99
PATIENTS_PER_PROVIDER = 8  # a hospitalist/attending carries ~8-15 inpatients
CAPACITY_SLACK = 1.25
HOSPITAL_KINDS = ("General Hospital", "Medical Center", "Memorial Hospital", "Regional Hospital")  # capacity above the average load a provider is staffed for


@dataclass(frozen=True)
class Reference:
    """All reference records of a run; ``providers_by_dept[(facility_id, dept)]`` lists ids."""

    facilities: tuple[FacilityRef, ...]
    providers: tuple[ProviderRef, ...]

    def providers_of(self, facility_id: str, department: str) -> list[ProviderRef]:
        return [
            p for p in self.providers if p.facility_id == facility_id and p.department == department
        ]


def department_beds(beds: int) -> dict[str, int]:
    """Split ``beds`` over the departments by peak patient-days (largest remainder rounding)."""
    weights = {d: rules.DEPT[d].share * rules.mean_los_days(d) * rules.peak_factor(d) * rules.BED_LOAD[d]
               for d in DEPARTMENTS}
    total = sum(weights.values())
    spare = beds - MIN_BEDS_PER_DEPARTMENT * len(DEPARTMENTS)
    raw = {d: spare * w / total for d, w in weights.items()}
    out = {d: MIN_BEDS_PER_DEPARTMENT + int(v) for d, v in raw.items()}
    left = beds - sum(out.values())
    for d in sorted(DEPARTMENTS, key=lambda d: (-(raw[d] - int(raw[d])), d))[:left]:
        out[d] += 1
    return out


def build_reference(seed: int, facilities: int, beds: int) -> Reference:
    """Facilities F01.., each with ``beds`` beds, and providers ``F01-D001``.. per department."""
    if facilities < 1 or facilities > MAX_FACILITIES:
        raise ValueError(f"facilities must be 1..{MAX_FACILITIES}")
    if beds < MIN_BEDS:
        raise ValueError(f"beds must be at least {MIN_BEDS}")
    fake = Faker("en_US")
    fake.seed_instance(seed)
    facs: list[FacilityRef] = []
    provs: list[ProviderRef] = []
    for f in range(1, facilities + 1):
        fid = f"F{f:02d}"
        split = department_beds(beds)
        name = f"{fake.last_name()} {fake.random_element(HOSPITAL_KINDS)}"
        facs.append(FacilityRef(facility_id=fid, name=name, beds=beds, department_beds=split))
        n = 0
        for dept in DEPARTMENTS:
            count = max(2, math.ceil(split[dept] / PATIENTS_PER_PROVIDER))
            capacity = max(2, math.ceil(split[dept] / count * CAPACITY_SLACK))
            for _ in range(count):
                n += 1
                provs.append(
                    ProviderRef(provider_id=f"{fid}-D{n:03d}", facility_id=fid,
                                department=dept, capacity=capacity)
                )
    return Reference(facilities=tuple(facs), providers=tuple(provs))


def provider_names(seed: int, reference: Reference) -> dict[str, str]:
    """Display names for providers (seeded Faker): for demos and dashboards, never in events."""
    fake = Faker("en_US")
    fake.seed_instance(seed + 1)
    return {p.provider_id: f"Dr. {fake.first_name()} {fake.last_name()}" for p in reference.providers}
