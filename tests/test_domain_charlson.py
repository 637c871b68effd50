"""Charlson index: hand-checked Quan 2005 facts, and comorbidipy as an independent implementation."""

from __future__ import annotations

import random
import warnings

import pytest

from stream.domain.charlson import CHARLSON_WEIGHTS, QUAN_ICD10, charlson_conditions, charlson_index


@pytest.mark.parametrize(
    ("code", "condition"),
    [
        ("I21.4", "ami"),
        ("I25.2", "ami"),
        ("I50.9", "chf"),
        ("I11.0", "chf"),
        ("J44.1", "copd"),
        ("E11.9", "diab"),
        ("E11.65", "diab"),  # E11.6x = other specified complications: Quan puts it with "without"
        ("E11.21", "diabwc"),
        ("N18.6", "rend"),
        ("C34.90", "canc"),
        ("C78.00", "metacanc"),
        ("K70.40", "msld"),
        ("K70.30", "mld"),
        ("B20", "aids"),
        ("G30.9", "dementia"),
        ("I63.9", "cevd"),
        ("G81.90", "hp"),
        ("M05.79", "rheumd"),
        ("K25.9", "pud"),
        ("I70.0", "pvd"),
    ],
)
def test_quan_codes(code: str, condition: str) -> None:
    assert charlson_conditions([code]) == {condition}
    assert charlson_conditions([code.replace(".", "").lower()]) == {condition}


@pytest.mark.parametrize("code", ["I10", "E78.5", "J18.9", "S72.001A", "Z00.00", "I25.10", "C44.91"])
def test_codes_outside_charlson(code: str) -> None:
    assert charlson_conditions([code]) == set()
    assert charlson_index([code]) == 0


def test_hierarchy() -> None:
    assert charlson_index(["K70.30"]) == 1
    assert charlson_index(["K70.30", "K70.40"]) == 3  # severe liver replaces mild
    assert charlson_index(["E11.9", "E11.21"]) == 2
    assert charlson_index(["C34.90"]) == 2
    assert charlson_index(["C34.90", "C78.00"]) == 6
    assert charlson_index(["I50.9", "I50.9", "I50.1"]) == 1  # a condition counts once


def _comorbidipy():
    """Import comorbidipy 0.5, which imports a name pandas >= 2.2 moved (shim it, do not patch pandas)."""
    import pandas.core.common as pcc

    if not hasattr(pcc, "SettingWithCopyWarning"):
        pcc.SettingWithCopyWarning = type("SettingWithCopyWarning", (Warning,), {})
    import comorbidipy

    return comorbidipy


def test_matches_comorbidipy_on_random_code_sets() -> None:
    comorbidipy = _comorbidipy()
    import pandas as pd

    rng = random.Random(20250101)
    prefixes = [p for ps in QUAN_ICD10.values() for p in ps]
    noise = ["I10", "E785", "J189", "Z0000", "K219", "M545", "R079", "N390", "C449", "I2510"]
    rows: list[tuple[int, str]] = []
    sets: dict[int, list[str]] = {}
    for i in range(600):
        codes = []
        for _ in range(rng.randint(1, 8)):
            base = rng.choice(prefixes) if rng.random() < 0.7 else rng.choice(noise)
            codes.append(base + "".join(rng.choice("0123456789") for _ in range(rng.randint(0, 2))))
        sets[i] = codes
        rows += [(i, c) for c in codes]
    df = pd.DataFrame(rows, columns=["id", "code"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = comorbidipy.comorbidity(df, age=None, score="charlson", icd="icd10", variant="quan",
                                      weighting="charlson", assign0=True)
    ref_score = dict(zip(ref["id"], ref["comorbidity_score"]))
    mismatches = [i for i, codes in sets.items() if charlson_index(codes) != ref_score[i]]
    assert not mismatches, [(sets[i], charlson_index(sets[i]), ref_score[i]) for i in mismatches[:5]]
    # the conditions too, not just the sum (comorbidipy keeps both forms flagged; assign0 only weights)
    cols = list(CHARLSON_WEIGHTS)
    for i, codes in sets.items():
        row = ref.loc[ref["id"] == i, cols].iloc[0]
        assert charlson_conditions(codes) == {c for c in cols if row[c] == 1}
    # and the sample is not trivial
    assert len({ref_score[i] for i in sets}) > 8
