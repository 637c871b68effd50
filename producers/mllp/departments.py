"""PV1-3 point of care -> department: the table that turns a hospital's location codes into
the department names of the contract (DESIGN.md: Emergency, Cardiology, ...).

Location codes are each hospital's own (HL7 table 0302 is user-defined), so the table is
configuration: :data:`DEFAULT` holds common codes and the department names themselves;
``wardstream mllp --departments FILE`` adds or overrides entries from a JSON object
(``{"4W": "Cardiology", "ICU2": "Internal Medicine"}``). Keys match case-insensitively; a
department name not in :data:`contracts.events.DEPARTMENTS` is allowed (DESIGN.md: "at least").
A point of care the table does not know makes the message unmappable (AR, DLQ): a guess would
put its KPIs in the wrong department.

>>> table = DepartmentTable.default()
>>> table.lookup("ed"), table.lookup("Internal Medicine"), table.lookup("4W")
('Emergency', 'Internal Medicine', None)
>>> table.with_overrides({"4w": "Cardiology"}).lookup("4W")
'Cardiology'
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from contracts.events import DEPARTMENTS

_CODES: dict[str, tuple[str, ...]] = {
    "Emergency": ("ED", "ER", "EMER", "EMERG", "EMERGENCY"),
    "Cardiology": ("CARD", "CARDIO", "CCU", "CVU"),
    "Oncology": ("ONC", "ONCO", "HEMONC"),
    "Orthopedics": ("ORTH", "ORTHO"),
    "Pediatrics": ("PED", "PEDS", "PICU"),
    "Internal Medicine": ("IM", "MED", "MEDICINE", "GIM"),
    "Neurology": ("NEU", "NEURO", "NSU"),
    "Surgery": ("SURG", "SUR", "SICU", "OR"),
}

DEFAULT: dict[str, str] = {
    **{name.upper(): name for name in DEPARTMENTS},
    **{code: name for name, codes in _CODES.items() for code in codes},
}


@dataclass(frozen=True)
class DepartmentTable:
    """Point-of-care code (upper-cased) -> department name."""

    entries: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def default(cls) -> "DepartmentTable":
        return cls(dict(DEFAULT))

    @classmethod
    def from_file(cls, path: Path) -> "DepartmentTable":
        """The default table with the entries of the JSON object in ``path`` added / overriding;
        raises ValueError with one readable line when the file is not such an object."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: {exc}") from None
        if not isinstance(data, dict) or not all(
                isinstance(k, str) and isinstance(v, str) and k.strip() and v.strip()
                for k, v in data.items()):
            raise ValueError(f"{path}: must be a JSON object of point-of-care code -> department name")
        return cls.default().with_overrides(data)

    def with_overrides(self, extra: Mapping[str, str]) -> "DepartmentTable":
        return DepartmentTable({**self.entries, **{k.strip().upper(): v.strip() for k, v in extra.items()}})

    def lookup(self, point_of_care: str) -> str | None:
        return self.entries.get(point_of_care.strip().upper())
