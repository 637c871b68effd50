"""Patient merges (A40) in the ADT flow, over plain dicts on 4 partitions (stream/domain/merges.py):
the prior MRN's state lives on another partition than the survivor's, and the merge's later hops
travel ``hospital.adt-merges`` (here: applied right after the A40 by :func:`flow_inputs.run_flow`,
or some events later where a test delays them)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import orjson
import pytest

from contracts.events import DeadLetter, ReadmissionLabel, dump
from flow_inputs import N, flow_tables, run_flow
from stream.adt_flow import ACCEPTED, ALERTS, DLQ, LABELS, MERGES, SCORES, AdtFlow
from stream.domain import merges, patient
from stream.domain.examples import admission, discharge, merge, transfer
from stream_oracle import Oracle, differing_windows
from test_stream_withdrawals import cancel
from wardstream.kafka_io import key_partition

SURVIVOR, PRIOR, OTHER = "M2", "X2", "Q1"  # partitions 2, 3 and 2 of 4


def test_the_two_mrns_live_on_different_partitions() -> None:
    assert key_partition(SURVIVOR, N) != key_partition(PRIOR, N) == 3
    assert key_partition(OTHER, N) == key_partition(SURVIVOR, N)


def _run(events: list) -> tuple[AdtFlow, list[list]]:
    flow = AdtFlow(source_topic="hospital.adt", **flow_tables())
    _, outputs, _ = run_flow([orjson.loads(dump(e)) for e in events], flow=flow)
    return flow, outputs


def _labels(outputs: list[list]) -> dict[str, ReadmissionLabel]:
    return {o.key: ReadmissionLabel.model_validate_json(o.value) for got in outputs for o in got if o.topic == LABELS}


def _learned(flow: AdtFlow, pid: str) -> int:
    return flow.brain(key_partition(pid, N)).model.n_learned


def _walk(pid: str, encounter: str, first: int, last: int) -> list:
    """A planned stay from January ``first`` with a transfer every 5 days up to day ``last`` (of
    2025, may pass into February): moves a partition's watermark on (an event more than 7 days
    ahead of it is refused as far future) without a label of its own."""
    at = lambda day: datetime(2025, 1, 1, 8, tzinfo=timezone.utc) + timedelta(days=day - 1)  # noqa: E731
    return [admission(pid, encounter, at(first), admission_type="elective", admit_source="referral"),
            *(transfer(pid, encounter, at(d), department=("Cardiology", "Surgery")[i % 2])
              for i, d in enumerate(range(first + 5, last + 1, 5)))]


# the survivor's stay, then a readmission under a duplicate MRN, merged once it is known
STAY = [admission(SURVIVOR, "E1", "2025-01-01T08:00:00+00:00"),
        discharge(SURVIVOR, "E1", "2025-01-01T08:00:00+00:00", "2025-01-04T08:00:00+00:00"),
        admission(PRIOR, "E2", "2025-01-07T08:00:00+00:00"),
        discharge(PRIOR, "E2", "2025-01-07T08:00:00+00:00", "2025-01-09T08:00:00+00:00")]
MERGE = merge(SURVIVOR, PRIOR, "2025-01-10T08:00:00+00:00")
LATER = _walk(OTHER, "E9", 10, 40)  # past the survivor's due time (February 3)


def test_a_readmission_under_a_duplicate_mrn_counts_once_the_mrns_are_merged() -> None:
    flow, out = _run([*STAY, MERGE, *LATER])
    label = _labels(out)["E1"]
    assert (label.readmitted, label.readmission_encounter_id) == (True, "E2")
    assert label.known_at == STAY[2].occurred_at
    assert "E1" in {o.key for o in out[4] if o.topic == LABELS}  # decided by the merge's hops
    assert [o.topic for o in out[4] if o.topic == MERGES] == [MERGES, MERGES]  # retire, absorb
    assert _learned(flow, SURVIVOR) == 0  # a label a merge decided is not learned
    # without the merge: two patients, the discharge not readmitted (and learned)
    flow, out = _run([*STAY, *LATER])
    assert _labels(out)["E1"].readmitted is False and _learned(flow, SURVIVOR) == 1


def test_a_merge_after_the_label_is_known_changes_no_label() -> None:
    _, out = _run([*STAY, *LATER, merge(SURVIVOR, PRIOR, "2025-02-10T08:00:00+00:00")])
    assert _labels(out)["E1"].readmitted is False
    # the prior's discharge, pending on its quiet partition, moved past due: labelled at once
    (late,) = [ReadmissionLabel.model_validate_json(o.value) for o in out[-1] if o.topic == LABELS]
    assert (late.encounter_id, late.readmitted, late.known_at) == ("E2", False, STAY[3].occurred_at + timedelta(days=30))


def test_events_of_the_merged_mrn_go_to_the_dlq_and_the_history_counts_for_the_survivor() -> None:
    flow, out = _run([*STAY, MERGE,
                      admission(PRIOR, "E3", "2025-01-12T08:00:00+00:00"),
                      admission(SURVIVOR, "E4", "2025-01-13T08:00:00+00:00"),
                      discharge(SURVIVOR, "E4", "2025-01-13T08:00:00+00:00", "2025-01-15T08:00:00+00:00")])
    (letter,) = [DeadLetter.model_validate_json(o.value) for o in out[5] if o.topic == DLQ]
    assert letter.reason == "patient merged into another (A40)"
    state = patient.PatientState.from_dict(flow.patients[SURVIVOR])
    assert len(state.admissions) == 3 and state.readmissions[:1] == [STAY[2].occurred_at]
    (score,) = [o for o in out[7] if o.topic == SCORES]
    assert orjson.loads(score.value)["patient_id"] == SURVIVOR


def test_the_prior_s_open_stay_goes_on_under_the_survivor() -> None:
    adm = admission(PRIOR, "E2", "2025-01-12T08:00:00+00:00", department="Cardiology")
    dis = discharge(SURVIVOR, "E2", "2025-01-12T08:00:00+00:00", "2025-01-15T08:00:00+00:00",
                    department="Cardiology")
    flow, out = _run([adm, merge(SURVIVOR, PRIOR, "2025-01-13T08:00:00+00:00"), dis])
    assert [o.topic for o in out[2] if o.topic in (ACCEPTED, SCORES)] == [ACCEPTED, SCORES]
    assert patient.PatientState.from_dict(flow.patients[SURVIVOR]).pending[0].encounter_id == "E2"
    # the census the stay added on the prior's partition, the discharge takes off on the survivor's
    _, _, flushed = run_flow([orjson.loads(dump(e)) for e in (adm, merge(SURVIVOR, PRIOR, "2025-01-13T08:00:00+00:00"), dis)])
    census = {orjson.loads(v)["value"] for k, v in flushed
              if orjson.loads(v)["kpi"] == "census" and orjson.loads(v)["window"] == "1d"
              and orjson.loads(v)["dimension"] == "department" and orjson.loads(v)["window_start"].startswith("2025-01-15")}
    assert census == {0.0}


def test_a_moved_pending_discharge_is_labelled_on_the_survivor_s_partition_and_never_learned() -> None:
    flow, out = _run([admission(PRIOR, "E2", "2025-01-01T08:00:00+00:00"),
                      discharge(PRIOR, "E2", "2025-01-01T08:00:00+00:00", "2025-01-04T08:00:00+00:00"),
                      merge(SURVIVOR, PRIOR, "2025-01-05T08:00:00+00:00"),
                      admission(SURVIVOR, "E3", "2025-01-10T08:00:00+00:00"),
                      *_walk("X1", "E8", 8, 40)])  # the prior's partition passes its due time
    assert [(o.key, orjson.loads(o.value)["readmitted"]) for got in out for o in got if o.topic == LABELS] == [
        ("E2", True)]
    assert [o for o in out[3] if o.topic == LABELS]  # at the survivor's admission
    assert _learned(flow, SURVIVOR) == _learned(flow, PRIOR) == 0


def test_each_hop_delivered_again_changes_nothing() -> None:
    flow, out = _run([*STAY, MERGE])
    retire, absorb = [o for o in out[4] if o.topic == MERGES]
    before = {k: dict(v) for k, v in flow.patients.items()}
    # delivered again at a later offset: the retired MRN sends an empty absorb record (a survivor
    # always waits for one), which like the absorb record again changes nothing
    (empty,) = flow.process_merge(retire.value, key_partition(retire.route, N), 1)
    assert orjson.loads(empty.value)["state"] is None and empty.route == SURVIVOR
    for hop, offset in ((absorb, 1), (empty, 2)):
        assert flow.process_merge(hop.value, key_partition(hop.route, N), offset) == []
    assert {k: dict(v) for k, v in flow.patients.items()} == before
    # and at an offset already applied: skipped by the offset guard
    assert flow.process_merge(absorb.value, key_partition(absorb.route, N), 0) == []


@pytest.mark.parametrize("open_on", ["survivor", "prior"])
def test_absorb_keeps_one_open_stay(open_on: str) -> None:
    s = patient.apply_admission(None, admission(SURVIVOR, "E1", "2025-01-01T08:00:00+00:00"))[0]
    p = patient.apply_admission(None, admission(PRIOR, "E2", "2025-01-02T08:00:00+00:00"))[0]
    if open_on == "prior":
        s = patient.PatientState(patient_id=SURVIVOR)
    merged, outcomes, moved = merges.absorb(s, SURVIVOR, p.to_dict(), "m1")
    assert merged.open.encounter_id == ("E1" if open_on == "survivor" else "E2")
    assert (outcomes, moved, merged.absorbed) == ([], [], ["m1"])


LATE_PRIOR = admission(PRIOR, "E5", "2025-01-11T08:00:00+00:00")  # dead-lettered: merged the day before


def merge_feed() -> list:
    """Every kind of merge (a readmission under a duplicate MRN; a pending discharge moved, then
    readmitted under the survivor; an open stay moved and discharged under the survivor), an
    event of a merged MRN (dead-lettered), among patients on every partition, in time order."""
    events = [*STAY, MERGE, LATE_PRIOR,
              admission("X1", "E6", "2025-01-02T08:00:00+00:00"),
              discharge("X1", "E6", "2025-01-02T08:00:00+00:00", "2025-01-05T08:00:00+00:00"),
              merge("P9", "X1", "2025-01-06T08:00:00+00:00"),
              admission("P9", "E7", "2025-01-08T08:00:00+00:00", admission_type="urgent"),
              admission("Q3", "E8", "2025-01-09T08:00:00+00:00", department="Cardiology"),
              merge("Q4", "Q3", "2025-01-10T09:00:00+00:00"),
              discharge("Q4", "E8", "2025-01-09T08:00:00+00:00", "2025-01-13T08:00:00+00:00",
                        department="Cardiology"),
              *_walk(OTHER, "E9", 12, 50), *_walk("M1", "E10", 12, 50), *_walk("Q2", "E11", 12, 50),
              *_walk("P8", "E12", 12, 50)]
    return sorted(events, key=lambda e: e.occurred_at)


def test_kpis_and_labels_equal_the_oracle_with_merges() -> None:
    """:func:`merge_feed`'s KPI windows and labels are those of the independent oracle."""
    events = merge_feed()
    applied, outputs, flushed = run_flow([orjson.loads(dump(e)) for e in events])
    out = [o for got in outputs for o in got]
    assert len(applied) == len(events) - 1
    scores = {o.key: orjson.loads(o.value) for o in out if o.topic == SCORES}
    oracle = Oracle(applied, scores, {})
    labels = _labels(outputs)
    assert {k: (v.readmitted, v.readmission_encounter_id) for k, v in labels.items()} == {
        k: (v["readmitted"], v["readmission_encounter_id"]) for k, v in oracle.labels.items()}
    assert labels["E1"].readmitted and labels["E6"].readmitted and labels["E8"].readmitted is False
    bad, want = differing_windows(flushed, oracle)
    assert not bad, f"{len(bad)} of {len(want)} windows differ, e.g. {bad[:3]}"


def test_a_merge_record_the_flow_cannot_read_goes_to_the_dlq() -> None:
    flow = AdtFlow(source_topic="hospital.adt", **flow_tables())
    for offset, raw in enumerate((b"not json", b'{"step": "split"}')):
        (out,) = flow.process_merge(raw, 1, offset)
        letter = DeadLetter.model_validate_json(out.value)
        assert (letter.reason, letter.source_topic, letter.source_offset) == (
            "merge record without a known step", "hospital.adt-merges", offset)
    assert flow.applied_offset(1, "merge_offset") == 1 and flow.applied_offset(1) == -1


def test_a_moved_stay_cancelled_under_the_survivor_counts_nowhere() -> None:
    """An A11 under the survivor withdraws a stay admitted under the prior: its admission and
    census leave the KPIs (added on the prior's partition, reverted on the survivor's: the
    partitions' sum is what the combiners give), and the oracle agrees."""
    adm = admission(PRIOR, "E2", "2025-01-12T08:00:00+00:00")
    events = [adm, merge(SURVIVOR, PRIOR, "2025-01-12T10:00:00+00:00"),
              cancel("admission", "E2", "2025-01-12T12:00:00+00:00", patient=SURVIVOR),
              admission(OTHER, "E9", "2025-01-13T08:00:00+00:00"),
              discharge(OTHER, "E9", "2025-01-13T08:00:00+00:00", "2025-01-15T08:00:00+00:00")]
    applied, outputs, flushed = run_flow([orjson.loads(dump(e)) for e in events])
    assert len(applied) == 5
    windows = {(v["kpi"], v["dimension"], v["window"], v["window_start"][:10]): v["value"]
               for v in (orjson.loads(x) for _, x in flushed)}
    assert windows[("admissions", "facility", "1d", "2025-01-12")] == 0
    assert windows[("census", "facility", "1d", "2025-01-12")] == 0
    scores = {o.key: orjson.loads(o.value) for got in outputs for o in got if o.topic == SCORES}
    bad, want = differing_windows(flushed, Oracle(applied, scores, {}))
    assert not bad, f"{len(bad)} of {len(want)} windows differ, e.g. {bad[:3]}"


@pytest.mark.parametrize("delay", [3, 12])
def test_while_a_merge_is_in_flight_its_partition_waits_and_nothing_changes(delay: int) -> None:
    """The hops land ``delay`` events late (a backlog, a worker down): the survivor partition's
    messages of meanwhile are set aside and applied in order when the merge lands, so every
    partition applies its messages in the same order, and scores, alerts, labels, dead letters,
    KPI windows and the models are those of hops landing at once."""
    feed = [orjson.loads(dump(e)) for e in merge_feed() if e.event_id != LATE_PRIOR.event_id]
    flow0, flow = (AdtFlow(source_topic="hospital.adt", **flow_tables()) for _ in range(2))
    at_once, out0, windows0 = run_flow(feed, flow=flow0)
    late, out, windows = run_flow(feed, flow=flow, hop_delay=delay)

    def sent(outputs: list[list], topic: str) -> list[tuple]:
        return sorted((o.key, o.value) for got in outputs for o in got if o.topic == topic)

    def order(applied: list[dict]) -> list[tuple[int, str]]:
        return sorted(((e["_partition"], i), e["event_id"]) for i, e in enumerate(applied))

    assert [e["event_id"] for e in late] != [e["event_id"] for e in at_once]  # some did wait
    assert [x[1] for x in order(late)] == [x[1] for x in order(at_once)]  # each partition's order
    for topic in (SCORES, ALERTS, LABELS, DLQ):
        assert sent(out, topic) == sent(out0, topic), topic
    assert sent(out0, SCORES) and not sent(out0, DLQ)
    assert dict(windows) == dict(windows0)
    assert [flow.brain(p).model.n_learned for p in range(N)] == [flow0.brain(p).model.n_learned for p in range(N)]
