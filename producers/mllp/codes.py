"""HL7 v2 code tables -> the contract's enums (pure data).

The tables behind these fields are mostly "user-defined" in HL7 (each hospital fills its own),
so these hold the HL7 suggested values plus the codes common in US feeds (UB-04 disposition and
admission-source codes, CDC race codes). A code not listed makes the message unmappable rather
than guessed.
"""

from __future__ import annotations

from producers.rules import CONDITION_CODES

# PV1-4 admission type (HL7 table 0007)
ADMISSION_TYPE: dict[str, str] = {
    "E": "emergency", "A": "emergency",  # A: accident
    "U": "urgent", "L": "urgent",  # L: labor and delivery
    "C": "elective", "R": "elective", "EL": "elective",  # C: elective, R: routine
}

# PV1-14 admit source (HL7 table 0023 suggested values = UB-04 point of origin)
ADMIT_SOURCE: dict[str, str] = {
    "1": "referral", "2": "referral", "3": "referral",  # physician, clinic, HMO referral
    "4": "transfer", "5": "transfer", "6": "transfer",  # from a hospital, a SNF, another facility
    "7": "ed", "ED": "ed", "ER": "ed",
    "RF": "referral", "TR": "transfer",
}

# PID-8 administrative sex (HL7 table 0001; X: non-binary, added in later versions)
SEX: dict[str, str] = {"F": "F", "M": "M", "O": "O", "A": "O", "N": "O", "X": "O", "U": "U"}

# PV1-2 patient class (HL7 table 0004)
PATIENT_CLASS: dict[str, str] = {
    "I": "inpatient", "O": "outpatient", "E": "emergency", "P": "preadmit", "R": "recurring",
    "B": "obstetrics",
}

# PV1-36 discharge disposition (HL7 table 0112 = UB-04 patient discharge status)
DISPOSITION: dict[str, str] = {
    "01": "home", "1": "home",
    "06": "home_health", "6": "home_health",
    "03": "snf", "3": "snf", "61": "snf", "64": "snf",  # 61 swing bed, 64 Medicaid nursing facility
    "62": "rehab",
    "07": "ama", "7": "ama",
    "20": "expired", "40": "expired", "41": "expired", "42": "expired",
}

# PV1-20 financial class (HL7 table 0064, user-defined) or IN1-15 plan type (table 0086)
PAYER: dict[str, str] = {
    **{k: "medicare" for k in ("MC", "MCR", "MEDICARE", "MA", "MB", "MCARE")},
    **{k: "medicaid" for k in ("MD", "MCD", "MEDICAID", "MCAID")},
    **{k: "private" for k in ("COM", "COMM", "COMMERCIAL", "BC", "BCBS", "HMO", "PPO", "POS",
                              "EPO", "PRIVATE", "INS", "WC")},
    **{k: "uninsured" for k in ("SP", "SELF", "SELFPAY", "SELF-PAY", "UNINSURED", "NONE", "CHARITY")},
}

# PID-10 race (CDC race and ethnicity code set, HL7 table 0005) -> the simulator's categories
RACE: dict[str, str] = {
    "2106-3": "white", "W": "white", "WHITE": "white",
    "2054-5": "black", "B": "black", "BLACK": "black",
    "2028-9": "asian", "A": "asian", "ASIAN": "asian",
    "1002-5": "other", "2076-8": "other", "2131-1": "other", "O": "other", "OTHER": "other",
}
HISPANIC = frozenset({"2135-2", "H"})  # PID-22 ethnic group: Hispanic or Latino

ICD10_SYSTEMS = frozenset({"", "I10", "I10C", "ICD10", "ICD-10", "ICD10CM", "ICD-10-CM"})
CPT_SYSTEMS = frozenset({"", "C4", "C5", "CPT", "CPT4", "CPT-4"})

# OBX-3 LOINC codes of the vitals the contract v1 admission carries
VITALS_LOINC: dict[str, str] = {
    "8480-6": "systolic_bp",
    "8462-4": "diastolic_bp",
    "8867-4": "heart_rate",
    "2345-7": "glucose_mg_dl", "2339-0": "glucose_mg_dl", "41653-7": "glucose_mg_dl",
}

# ICD-10 category (3 characters) -> the chronic-condition names of the contract's patient block
CHRONIC_BY_CATEGORY: dict[str, str] = {
    **{code[:3]: name for name, code in CONDITION_CODES.items()},
    "C50": "cancer",  # breast cancer (the simulator's other cancer code, producers.population)
}


def icd10(code: str) -> str:
    """An ICD-10-CM code in its dotted form (feeds send both ``I509`` and ``I50.9``).

    >>> icd10("i509"), icd10("I50.9"), icd10("I10")
    ('I50.9', 'I50.9', 'I10')
    """
    code = code.strip().upper()
    if len(code) > 3 and "." not in code:
        code = f"{code[:3]}.{code[3:]}"
    return code
