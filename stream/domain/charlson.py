"""Charlson comorbidity index from ICD-10(-CM) codes.

Conditions follow the Quan et al. 2005 ICD-10 coding algorithm (Med Care 43:1130), matched by code
prefix with dots ignored (``"E11.65"`` -> ``"E1165"`` starts with ``"E116"``: diabetes without chronic
complications). Weights are Charlson's 1987 originals; the more severe form of a condition replaces
the milder one (liver disease, diabetes, cancer), as in the `comorbidipy` package, which the tests use
as an independent check.

>>> sorted(charlson_conditions(["E11.9", "I50.9", "C78.00"]))
['chf', 'diab', 'metacanc']
>>> charlson_index(["E11.9", "I50.9", "C78.00"])  # 1 + 1 + 6
8
>>> charlson_index(["E11.9", "E11.21"])  # diabetes with complications supersedes diabetes
2
>>> charlson_index([])
0
"""

from __future__ import annotations

from collections.abc import Iterable

# Quan 2005, ICD-10 (prefixes without dots).
QUAN_ICD10: dict[str, tuple[str, ...]] = {
    "ami": ("I21", "I22", "I252"),
    "chf": (
        "I099", "I110", "I130", "I132", "I255", "I420", "I425", "I426", "I427", "I428", "I429",
        "I43", "I50", "P290",
    ),
    "pvd": (
        "I70", "I71", "I731", "I738", "I739", "I771", "I790", "I792", "K551", "K558", "K559",
        "Z958", "Z959",
    ),
    "cevd": (
        "G45", "G46", "H340", "I60", "I61", "I62", "I63", "I64", "I65", "I66", "I67", "I68", "I69",
    ),
    "dementia": ("F00", "F01", "F02", "F03", "F051", "G30", "G311"),
    "copd": (
        "I278", "I279", "J40", "J41", "J42", "J43", "J44", "J45", "J46", "J47", "J60", "J61",
        "J62", "J63", "J64", "J65", "J66", "J67", "J684", "J701", "J703",
    ),
    "rheumd": ("M05", "M06", "M315", "M32", "M33", "M34", "M351", "M353", "M360"),
    "pud": ("K25", "K26", "K27", "K28"),
    "mld": (
        "B18", "K700", "K701", "K702", "K703", "K709", "K713", "K714", "K715", "K717", "K73",
        "K74", "K760", "K762", "K763", "K764", "K768", "K769", "Z944",
    ),
    "diab": (
        "E100", "E101", "E106", "E108", "E109", "E110", "E111", "E116", "E118", "E119", "E120",
        "E121", "E126", "E128", "E129", "E130", "E131", "E136", "E138", "E139", "E140", "E141",
        "E146", "E148", "E149",
    ),
    "diabwc": (
        "E102", "E103", "E104", "E105", "E107", "E112", "E113", "E114", "E115", "E117", "E122",
        "E123", "E124", "E125", "E127", "E132", "E133", "E134", "E135", "E137", "E142", "E143",
        "E144", "E145", "E147",
    ),
    "hp": (
        "G041", "G114", "G801", "G802", "G81", "G82", "G830", "G831", "G832", "G833", "G834",
        "G839",
    ),
    "rend": (
        "I120", "I131", "N032", "N033", "N034", "N035", "N036", "N037", "N052", "N053", "N054",
        "N055", "N056", "N057", "N18", "N19", "N250", "Z490", "Z491", "Z492", "Z940", "Z992",
    ),
    "canc": tuple(
        [f"C{n:02d}" for n in (*range(0, 27), *range(30, 35), *range(37, 42), 43,
                               *range(45, 59), *range(60, 77), 81, 82, 83, 84, 85, 88,
                               *range(90, 98))]
    ),
    "msld": ("I850", "I859", "I864", "I982", "K704", "K711", "K721", "K729", "K765", "K766", "K767"),
    "metacanc": ("C77", "C78", "C79", "C80"),
    "aids": ("B20", "B21", "B22", "B24"),
}

# Charlson et al. 1987 weights.
CHARLSON_WEIGHTS: dict[str, int] = {
    "ami": 1, "chf": 1, "pvd": 1, "cevd": 1, "dementia": 1, "copd": 1, "rheumd": 1, "pud": 1,
    "mld": 1, "diab": 1, "diabwc": 2, "hp": 2, "rend": 2, "canc": 2, "msld": 3, "metacanc": 6,
    "aids": 6,
}

# severe form -> the milder form it supersedes (counted once, at the severe weight)
HIERARCHY: dict[str, str] = {"msld": "mld", "diabwc": "diab", "metacanc": "canc"}

# every Quan prefix has 3 or 4 characters: index them by their first 3 for a dict lookup per code
_BY_HEAD: dict[str, list[tuple[str, str]]] = {}
for _cond, _prefixes in QUAN_ICD10.items():
    for _prefix in _prefixes:
        assert 3 <= len(_prefix) <= 4, _prefix
        _BY_HEAD.setdefault(_prefix[:3], []).append((_prefix, _cond))


def _normalize(code: str) -> str:
    return code.replace(".", "").strip().upper()


def charlson_conditions(codes: Iterable[str]) -> set[str]:
    """The Charlson conditions (keys of ``QUAN_ICD10``) any of these codes indicate."""
    found: set[str] = set()
    for code in codes:
        c = _normalize(code)
        for prefix, cond in _BY_HEAD.get(c[:3], ()):
            if c.startswith(prefix):
                found.add(cond)
    return found


def charlson_index(codes: Iterable[str]) -> int:
    """Charlson comorbidity index (1987 weights, severe form supersedes the mild one)."""
    conds = charlson_conditions(codes)
    for severe, mild in HIERARCHY.items():
        if severe in conds:
            conds.discard(mild)
    return sum(CHARLSON_WEIGHTS[c] for c in conds)
