"""Patient state transitions: validation reasons, history counts, the 30-day label rules, expiry."""

from __future__ import annotations

import json
from datetime import timedelta

from stream.domain import patient as pt
from stream.domain.examples import admission, discharge, transfer, ts
from stream.domain.patient import PatientState, PendingDischarge


def pending_for(dis, score: float = 0.3, high_risk: bool = False) -> PendingDischarge:
    return PendingDischarge(
        encounter_id=dis.encounter_id, patient_id=dis.patient_id, facility_id=dis.facility_id,
        department=dis.department, attending_provider_id=dis.attending_provider_id,
        discharged_at=dis.occurred_at, features={"age": 70.0, "los_log": 1.2}, score=score, lace=9,
        threshold=0.25, high_risk=high_risk,
    )


def stay(state, pid, eid, t_in, t_out, **adm_kw):
    """Admit, discharge, and keep the discharge pending (as the app does for index discharges)."""
    assert pt.check(state, admission(pid, eid, t_in, **adm_kw), None) is None
    state, outcomes = pt.apply_admission(state, admission(pid, eid, t_in, **adm_kw))
    dis = discharge(pid, eid, t_in, t_out)
    assert pt.check(state, dis, None) is None
    state, ctx = pt.apply_discharge(state, dis)
    if pt.is_index(dis):
        state = pt.add_pending(state, pending_for(dis))
    return state, ctx, outcomes


T0 = "2025-03-01T08:00:00+00:00"
T_OUT = "2025-03-05T08:00:00+00:00"
DUE = ts(T_OUT) + timedelta(days=30)


# --------------------------------------------------------------------------- labels


def test_emergency_readmission_within_30_days_is_true() -> None:
    s, _, _ = stay(None, "P1", "E1", T0, T_OUT)
    again = DUE - timedelta(days=10)
    s, outcomes = pt.apply_admission(s, admission("P1", "E2", again))
    assert [(o.pending.encounter_id, o.readmitted, o.readmission_encounter_id, o.known_at) for o in outcomes] == [
        ("E1", True, "E2", again)
    ]
    assert s.pending == [] and s.open.encounter_id == "E2"
    label = outcomes[0].to_label()
    assert label.readmitted and label.readmission_encounter_id == "E2"
    assert label.discharged_at == ts(T_OUT) and label.known_at == again


def test_readmission_at_exactly_30_days_counts_and_expiry_waits_past_due() -> None:
    s, _, _ = stay(None, "P1", "E1", T0, T_OUT)
    s_exp, none = pt.expire(s, DUE)  # the watermark reaching due_at does not decide yet
    assert none == [] and len(s_exp.pending) == 1
    s2, outcomes = pt.apply_admission(s_exp, admission("P1", "E2", DUE, admission_type="urgent"))
    assert [(o.readmitted, o.known_at) for o in outcomes] == [(True, DUE)]


def test_admission_just_after_30_days_is_not_a_readmission() -> None:
    s, _, _ = stay(None, "P1", "E1", T0, T_OUT)
    late = DUE + timedelta(seconds=1)
    s2, outcomes = pt.apply_admission(s, admission("P1", "E2", late))
    # the overdue discharge gets its false label, known at due_at, not at the admission
    assert [(o.pending.encounter_id, o.readmitted, o.readmission_encounter_id, o.known_at) for o in outcomes] == [
        ("E1", False, None, DUE)
    ]
    assert s2.pending == []


def test_elective_admission_resolves_nothing() -> None:
    s, _, _ = stay(None, "P1", "E1", T0, T_OUT)
    t = ts(T_OUT) + timedelta(days=3)
    s, outcomes = pt.apply_admission(s, admission("P1", "E2", t, admission_type="elective", admit_source="referral"))
    assert outcomes == [] and [p.encounter_id for p in s.pending] == ["E1"]
    # both E1 and (after its discharge) E2 are pending; an emergency admission resolves both
    s, _ = pt.apply_discharge(s, discharge("P1", "E2", t, t + timedelta(days=2)))
    s = pt.add_pending(s, pending_for(discharge("P1", "E2", t, t + timedelta(days=2))))
    s, outcomes = pt.apply_admission(s, admission("P1", "E3", t + timedelta(days=5)))
    assert [(o.pending.encounter_id, o.readmitted) for o in outcomes] == [("E1", True), ("E2", True)]


def test_expire_gives_false_labels_known_at_due() -> None:
    s, _, _ = stay(None, "P1", "E1", T0, T_OUT)
    s, outcomes = pt.expire(s, DUE + timedelta(hours=5))
    assert [(o.readmitted, o.readmission_encounter_id, o.known_at) for o in outcomes] == [(False, None, DUE)]
    assert s.pending == []
    assert pt.expire(s, DUE + timedelta(days=90)) == (s, [])


def test_expired_patient_is_not_an_index_discharge() -> None:
    dis = discharge("P1", "E1", T0, T_OUT, disposition="expired")
    assert not pt.is_index(dis)
    assert pt.is_index(discharge("P1", "E1", T0, T_OUT, disposition="ama"))


def test_add_pending_is_idempotent() -> None:
    s, _, _ = stay(None, "P1", "E1", T0, T_OUT)
    p = pending_for(discharge("P1", "E1", T0, T_OUT), score=0.9)
    s = pt.add_pending(pt.add_pending(s, p), p)
    assert [x.score for x in s.pending] == [0.9]
    assert pt.next_due(s) == DUE


# --------------------------------------------------------------------------- history


def test_history_counts_before_this_admission() -> None:
    s = None
    day = ts("2024-01-01T00:00:00+00:00")
    # five ED stays, the first more than 12 months before the last admission
    starts = [day, day + timedelta(days=200), day + timedelta(days=300), day + timedelta(days=350),
              day + timedelta(days=390)]
    for i, t in enumerate(starts):
        s, _, _ = stay(s, "P1", f"E{i}", t, t + timedelta(days=2))
    t = day + timedelta(days=400)
    s, _ = pt.apply_admission(s, admission("P1", "E9", t, admit_source="referral",
                                           diagnosis_codes=["E11.21", "N18.6"]))
    s, ctx = pt.apply_discharge(s, discharge("P1", "E9", t, t + timedelta(days=1), diagnosis_codes=["C78.00"]))
    # admissions within 365 days before t: days 200, 300, 350, 390 (day 0 is 400 days back)
    assert ctx.prior_admissions_12m == 4
    # ED visits within 183 days: days 300, 350, 390; the current (referral) admission not counted
    assert ctx.ed_visits_6m == 3
    assert ctx.charlson == 2 + 2 + 6  # diabwc + renal + metastatic, admission and discharge codes
    assert ctx.open.encounter_id == "E9" and s.open is None
    assert all(a > t - timedelta(days=365) for a in s.admissions)


def test_transfer_moves_the_open_encounter() -> None:
    s, _ = pt.apply_admission(None, admission("P1", "E1", T0))
    tr = transfer("P1", "E1", "2025-03-02T08:00:00+00:00", department="Cardiology", provider="D7")
    assert pt.check(s, tr, None) is None
    s = pt.apply_transfer(s, tr)
    assert (s.open.department, s.open.attending_provider_id) == ("Cardiology", "D7")
    assert s.last_event_at == tr.occurred_at and str(tr.event_id) in s.recent_event_ids


# --------------------------------------------------------------------------- checks


def test_check_reasons() -> None:
    adm = admission("P1", "E1", T0)
    s, _ = pt.apply_admission(None, adm)
    wm = ts(T0)
    assert pt.check(s, adm, wm) == "duplicate event_id"
    assert pt.check(s, admission("P1", "E2", T0, seed="other"), wm) == "admission while an encounter is open"
    early = transfer("P1", "E1", ts(T0) - timedelta(seconds=1))
    assert pt.check(s, early, wm) == "out of order for patient"
    assert pt.check(s, transfer("P1", "E1", ts(T0)), wm) is None  # equal time is in order
    far = transfer("P1", "E1", wm + pt.FAR_FUTURE + timedelta(seconds=1))
    assert pt.check(s, far, wm) == "far future"
    assert pt.check(s, far, None) is None  # no watermark yet: nothing to compare with
    assert pt.check(s, transfer("P1", "E1", wm + pt.FAR_FUTURE), wm) is None
    assert pt.check(s, transfer("P1", "EX", T_OUT), None) == "encounter_id does not match the open encounter"
    assert pt.check(s, discharge("P1", "EX", T0, T_OUT), None) == "encounter_id does not match the open encounter"
    bad_los = discharge("P1", "E1", T0, T_OUT, length_of_stay_days=4.06)
    assert pt.check(s, bad_los, None) == "length_of_stay_days inconsistent with admitted_at"
    assert pt.check(s, discharge("P1", "E1", T0, T_OUT, length_of_stay_days=4.04), None) is None
    other_admit = discharge("P1", "E1", "2025-03-01T00:00:00+00:00", T_OUT)
    assert pt.check(s, other_admit, None) == "admitted_at does not match the open encounter"

    assert pt.check(None, discharge("P1", "E1", T0, T_OUT), None) == "discharge without open admission"
    assert pt.check(None, transfer("P1", "E1", T0), None) == "transfer without open admission"
    closed, _ = pt.apply_discharge(s, discharge("P1", "E1", T0, T_OUT))
    assert pt.check(closed, transfer("P1", "E1", "2025-03-06T00:00:00+00:00"), None) == "transfer without open admission"
    assert pt.check(None, admission("P2", "E5", T0), None) is None


def test_recent_event_ids_are_bounded() -> None:
    s, _ = pt.apply_admission(None, admission("P1", "E1", T0))
    for i in range(100):
        s = pt.apply_transfer(s, transfer("P1", "E1", ts(T0) + timedelta(minutes=i)))
    assert len(s.recent_event_ids) == pt.RECENT_EVENT_IDS


# --------------------------------------------------------------------------- serialization


def test_state_round_trips_through_json() -> None:
    s, _, _ = stay(None, "P1", "E1", T0, T_OUT, chronic_conditions=["diabetes", "copd"],
                   diagnosis_codes=["E11.9", "J44.1"])
    s, _ = pt.apply_admission(s, admission("P1", "E2", "2025-03-20T11:30:00.123456+00:00",
                                           admission_type="elective", admit_source="referral"))
    d = s.to_dict()
    d2 = json.loads(json.dumps(d))
    back = PatientState.from_dict(d2)
    assert back == s
    assert back.to_dict() == d
    empty = PatientState("P9")
    assert PatientState.from_dict(json.loads(json.dumps(empty.to_dict()))) == empty


def test_transitions_do_not_mutate_their_input() -> None:
    s, _, _ = stay(None, "P1", "E1", T0, T_OUT)
    before = s.to_dict()
    pt.apply_admission(s, admission("P1", "E2", "2025-03-10T00:00:00+00:00"))
    pt.expire(s, DUE + timedelta(days=1))
    assert s.to_dict() == before


def test_readmission_history_for_features() -> None:
    day = ts("2025-01-01T00:00:00+00:00")
    s, ctx, _ = stay(None, "P1", "E1", day, day + timedelta(days=3))
    assert ctx.readmissions_12m == 0 and ctx.days_since_last_discharge is None
    # emergency return 10 days after discharge: a readmission, then a planned stay later on
    t2 = day + timedelta(days=13)
    s, ctx, outcomes = stay(s, "P1", "E2", t2, t2 + timedelta(days=2))
    assert [o.readmitted for o in outcomes] == [True]
    assert ctx.readmissions_12m == 0 and ctx.days_since_last_discharge == 10.0  # counted before E2
    t3 = t2 + timedelta(days=60)
    s, ctx, outcomes = stay(s, "P1", "E3", t3, t3 + timedelta(days=1), admission_type="elective",
                            admit_source="referral")
    assert ctx.readmissions_12m == 1 and ctx.days_since_last_discharge == 58.0
    assert [o.readmitted for o in outcomes] == [False]  # E2 expired (due before E3), known at due
    assert PatientState.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    # states written before these fields existed still load
    old = {k: v for k, v in s.to_dict().items() if k not in ("discharges", "readmissions")}
    assert PatientState.from_dict(old).discharges == []
