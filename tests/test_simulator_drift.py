"""The simulator's drift scenario (``--shift-at DATE --shift KIND``), measured on its output files.

A 300-bed hospital, 84 days from 2025-01-01, shifted on 2025-02-12: the population stability index
(PSI, computed here with numpy) between the 28 days before and the 28 days after the shift, on what
the readmission model sees (age and chronic conditions of admissions, Charlson index of the discharge
codes) and on the truth file's p_readmit. Watch at 0.10, act at 0.25 (issue 15).
"""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pytest
from typer.testing import CliRunner

from stream.domain.charlson import charlson_index
from wardstream.cli import app

runner = CliRunner()
START, SHIFT_AT, DAYS = date(2025, 1, 1), date(2025, 2, 12), 84
KINDS = ("none", "case-mix", "coding", "both")
SEEDS = (42, 11)


def psi(before: np.ndarray, after: np.ndarray, edges: np.ndarray) -> float:
    """Population stability index of ``after`` against ``before`` over the bins ``edges``.

    >>> round(psi(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]), np.array([-0.5, 0.5, 1.5])), 3)
    0.275
    """
    b = np.clip(np.histogram(before, edges)[0] / len(before), 1e-4, None)
    a = np.clip(np.histogram(after, edges)[0] / len(after), 1e-4, None)
    return float(((a - b) * np.log(a / b)).sum())


def deciles(values: np.ndarray) -> np.ndarray:
    """Bin edges at the deciles of ``values`` (the reference window), open at both ends."""
    edges = np.unique(np.quantile(values, np.linspace(0, 1, 11)))
    edges[0], edges[-1] = -np.inf, np.inf
    return edges


COUNTS = np.array([-0.5, 0.5, 1.5, 2.5, 3.5, 4.5, np.inf])  # 0, 1, 2, 3, 4, 5+


def simulate(out: Path, seed: int, kind: str) -> tuple[bytes, bytes]:
    events, truth = out / f"{seed}-{kind}.jsonl", out / f"{seed}-{kind}.truth.jsonl"
    shift = [] if kind == "none" else ["--shift-at", SHIFT_AT.isoformat(), "--shift", kind]
    res = runner.invoke(app, ["simulate", "--seed", str(seed), "--start", START.isoformat(),
                              "--days", str(DAYS), "--beds", "300", "--no-progress", "--out", str(events),
                              "--truth-out", str(truth), *shift])
    assert res.exit_code == 0, res.output
    return events.read_bytes(), truth.read_bytes()


def windows(events: bytes, truth: bytes) -> dict[str, tuple[pd.DataFrame, pd.DataFrame]]:
    """Admissions and (non-expired) discharges of the 28 days before and after the shift date."""
    evs = [orjson.loads(line) for line in events.splitlines()]
    p = {r["encounter_id"]: r["p_readmit"] for r in map(orjson.loads, truth.splitlines())}
    adm = {e["encounter_id"]: e for e in evs if e["event_type"] == "admission"}
    a = pd.DataFrame([{"t": e["occurred_at"], "age": e["patient"]["age"],
                       "n_chronic": len(e["patient"]["chronic_conditions"])} for e in adm.values()])
    d = pd.DataFrame([{"t": e["occurred_at"], "p_readmit": p[e["encounter_id"]],
                       "charlson": charlson_index(adm[e["encounter_id"]]["diagnosis_codes"]
                                                 + e["diagnosis_codes"])}
                      for e in evs
                      if e["event_type"] == "discharge" and e["discharge_disposition"] != "expired"])
    shift = pd.Timestamp(SHIFT_AT, tz="UTC")
    out = {}
    for name, df in (("adm", a), ("dis", d)):
        t = pd.to_datetime(df.t, utc=True)
        out[name] = (df[(t >= shift - pd.Timedelta(days=28)) & (t < shift)],
                     df[(t >= shift) & (t < shift + pd.Timedelta(days=28))])
    return out


def psis(events: bytes, truth: bytes) -> dict[str, float]:
    w = windows(events, truth)
    (ab, aa), (db, da) = w["adm"], w["dis"]
    assert len(db) >= 500 and len(da) >= 500  # the minimum per 28-day window
    return {"age": psi(ab.age, aa.age, deciles(ab.age)),
            "n_chronic": psi(ab.n_chronic, aa.n_chronic, COUNTS),
            "charlson": psi(db.charlson, da.charlson, COUNTS),
            "p_readmit": psi(db.p_readmit, da.p_readmit, deciles(db.p_readmit))}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[tuple[int, str], tuple[bytes, bytes]]:
    out = tmp_path_factory.mktemp("drift")
    return {(seed, kind): simulate(out, seed, kind) for seed in SEEDS for kind in KINDS}


@pytest.fixture(scope="module")
def measured(runs) -> dict[tuple[int, str], dict[str, float]]:
    return {key: psis(*files) for key, files in runs.items()}


@pytest.mark.parametrize("seed", SEEDS)
def test_without_a_shift_nothing_drifts(measured, seed) -> None:
    assert max(measured[seed, "none"].values()) < 0.10, measured[seed, "none"]


@pytest.mark.parametrize("seed", SEEDS)
def test_case_mix_shift_moves_features_and_true_risk(measured, runs, seed) -> None:
    """Older, sicker arrivals: chronic conditions well past the act threshold, the true risk past the
    watch threshold, and the truth still means the probability (mean p_readmit rises with the rate)."""
    m = measured[seed, "case-mix"]
    assert m["n_chronic"] > 0.30, m
    assert m["age"] > 0.10 and m["p_readmit"] > 0.10, m
    (before, after) = windows(*runs[seed, "case-mix"])["dis"]
    assert after.p_readmit.mean() > 1.2 * before.p_readmit.mean()


@pytest.mark.parametrize("seed", SEEDS)
def test_coding_shift_moves_charlson_not_the_truth(measured, runs, seed) -> None:
    """Complete coding: only the discharge codes change (more of them), the patients do not. On its
    own it is a subtler drift (Charlson PSI 0.14-0.23 on seeds 1-3, 11, 42: past watch, short of act)."""
    m = measured[seed, "coding"]
    assert m["charlson"] > 0.12, m
    assert max(m["age"], m["n_chronic"], m["p_readmit"]) < 0.10, m
    plain, coded = runs[seed, "none"], runs[seed, "coding"]
    assert coded[1] == plain[1]  # same truth, byte for byte
    shift = SHIFT_AT.isoformat()
    more = 0
    for a, b in zip(plain[0].splitlines(), coded[0].splitlines(), strict=True):
        ea, eb = orjson.loads(a), orjson.loads(b)
        if ea["event_type"] == "discharge" and ea["occurred_at"] >= shift:
            assert eb["diagnosis_codes"][: len(ea["diagnosis_codes"])] == ea["diagnosis_codes"]
            more += len(eb["diagnosis_codes"]) > len(ea["diagnosis_codes"])
            ea["diagnosis_codes"] = eb["diagnosis_codes"]
        assert ea == eb
    assert more > 200


@pytest.mark.parametrize("seed", SEEDS)
def test_both_shifts_act_within_28_days(measured, seed) -> None:
    m = measured[seed, "both"]
    assert m["charlson"] > 0.30 and m["n_chronic"] > 0.30, m


@pytest.mark.parametrize("kind", KINDS[1:])
def test_events_before_the_shift_are_unchanged(runs, kind) -> None:
    shift = SHIFT_AT.isoformat().encode()
    plain, shifted = runs[42, "none"][0].splitlines(), runs[42, kind][0].splitlines()
    n = next(i for i, line in enumerate(plain) if orjson.loads(line)["occurred_at"].encode() >= shift)
    assert n > 1000 and shifted[:n] == plain[:n]


@pytest.mark.parametrize("args, reason", [
    (["--shift-at", "2025-02-30"], "is not a date like 2025-01-01"),
    (["--shift-at", "next week"], "is not a date like 2025-01-01"),
    (["--shift-at", "2025-03-01"], "2025-03-01 not in 2025-01-01 .. 2025-01-07"),
    (["--shift-at", "2024-12-31"], "not in 2025-01-01 .. 2025-01-07"),
    (["--shift", "coding"], "needs --shift-at DATE"),
])
def test_bad_shift_options_are_one_line_errors(args, reason) -> None:
    res = runner.invoke(app, ["simulate", "--no-progress", "--days", "7", *args])
    assert res.exit_code == 2, res.output
    line = next(x for x in res.output.splitlines() if "Invalid value" in x)
    assert "--shift" in line and reason in line, res.output


def test_shift_kind_is_checked_and_documented() -> None:
    res = runner.invoke(app, ["simulate", "--no-progress", "--shift-at", "2025-01-03", "--shift", "weird"])
    assert res.exit_code == 2 and "case-mix" in res.output
    help_text = runner.invoke(app, ["simulate", "--help"], env={"COLUMNS": "200"}).output
    assert "--shift-at" in help_text and "case-mix|coding|both" in help_text


def test_shift_on_the_first_and_last_day_parse(tmp_path) -> None:
    for day in (START, START + timedelta(days=6)):
        res = runner.invoke(app, ["simulate", "--no-progress", "--days", "7", "--shift-at", day.isoformat(),
                                  "--out", str(tmp_path / "e.jsonl")])
        assert res.exit_code == 0, res.output
