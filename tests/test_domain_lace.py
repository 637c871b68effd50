"""LACE point table at every edge (van Walraven 2010 as written in DESIGN.md)."""

from __future__ import annotations

import pytest

from stream.domain.lace import lace_index, lace_points


@pytest.mark.parametrize(
    ("los", "points"),
    [(0.0, 0), (0.99, 0), (1.0, 1), (1.99, 1), (2.0, 2), (3.5, 3), (3.999, 3), (4.0, 4), (6.99, 4),
     (7.0, 5), (13.99, 5), (14.0, 7), (90.0, 7)],
)
def test_length_points(los: float, points: int) -> None:
    assert lace_points(los, "elective", 0, 0)["L"] == points


@pytest.mark.parametrize(("kind", "points"), [("emergency", 3), ("urgent", 3), ("elective", 0)])
def test_acuity_points(kind: str, points: int) -> None:
    assert lace_points(0, kind, 0, 0)["A"] == points


@pytest.mark.parametrize(("charlson", "points"), [(0, 0), (1, 1), (2, 2), (3, 3), (4, 5), (5, 5), (12, 5)])
def test_comorbidity_points(charlson: int, points: int) -> None:
    assert lace_points(0, "elective", charlson, 0)["C"] == points


@pytest.mark.parametrize(("visits", "points"), [(0, 0), (1, 1), (3, 3), (4, 4), (5, 4), (30, 4)])
def test_ed_points(visits: int, points: int) -> None:
    assert lace_points(0, "elective", 0, visits)["E"] == points


def test_index_is_the_sum_and_in_range() -> None:
    assert lace_index(0, "elective", 0, 0) == 0
    assert lace_index(20, "emergency", 8, 10) == 19
    assert lace_index(5, "urgent", 2, 1) == 4 + 3 + 2 + 1
    for los in (0, 1.5, 5, 8, 20):
        for c in range(7):
            for e in range(6):
                v = lace_index(los, "emergency", c, e)
                assert 0 <= v <= 19
                assert v == sum(lace_points(los, "emergency", c, e).values())


@pytest.mark.parametrize("bad", [(-1, "elective", 0, 0), (1, "elective", -1, 0), (1, "elective", 0, -2)])
def test_rejects_negative_inputs(bad) -> None:
    with pytest.raises(ValueError):
        lace_index(*bad)
