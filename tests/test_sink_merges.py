"""Patient merges (A40) in PostgreSQL (V016): the sink keeps the merge and points every row of the
prior MRN at the survivor, whichever comes first, through a chain of merges, idempotently."""

from __future__ import annotations

import psycopg2
import pytest

from consumers.rows import Batch
from consumers.tables import write_batch
from stream.domain.examples import admission, discharge, merge
from test_sink_support import role_url, sink_db  # noqa: F401  (fixture)
from wardstream.config import settings

pytestmark = pytest.mark.e2e

IN, OUT = "2025-01-01T08:00:00+00:00", "2025-01-04T08:00:00+00:00"
IN2, OUT2 = "2025-01-10T08:00:00+00:00", "2025-01-12T08:00:00+00:00"


def _write(cur, *events_at: tuple) -> dict[str, int]:
    """One sink batch of (event, partition, offset), in its own transaction."""
    batch = Batch()
    for ev, partition, offset in events_at:
        batch.add_adt(ev, partition, offset)
    written = write_batch(cur, batch)
    cur.connection.commit()
    return written


def _rows(cur, sql: str) -> list[tuple]:
    cur.execute(sql)
    return cur.fetchall()


def test_the_prior_s_rows_follow_the_survivor_whatever_the_order(sink_db) -> None:
    conn = psycopg2.connect(role_url(sink_db, "wardstream_sink", settings().sink_password))
    try:
        with conn.cursor() as cur:
            _write(cur, (admission("M1", "E1", IN), 0, 0), (discharge("M1", "E1", IN, OUT), 0, 1),
                   (admission("X1", "E2", IN2), 1, 0))
            _write(cur, (merge("M1", "X1", "2025-01-11T08:00:00+00:00"), 0, 2))
            # the prior's discharge, stored after the merge (another partition of adt-accepted)
            late = (discharge("X1", "E2", IN2, OUT2), 1, 1)
            assert _write(cur, late)["rows of merged patients"] == 1  # its event (the encounter already was)
            assert _rows(cur, "SELECT encounter_id, patient_id, registered_patient_id FROM encounters "
                              "ORDER BY 1") == [("E1", "M1", None), ("E2", "M1", "X1")]
            assert _rows(cur, "SELECT event_type, patient_id, registered_patient_id FROM adt_events "
                              "ORDER BY occurred_at") == [
                ("admission", "M1", None), ("discharge", "M1", None), ("admission", "M1", "X1"),
                ("merge", "M1", None), ("discharge", "M1", "X1")]
            assert _rows(cur, "SELECT prior_patient_id, patient_id, source_offset FROM patient_merges") == [
                ("X1", "M1", 2)]
            with psycopg2.connect(sink_db) as owner, owner.cursor() as views:  # the sink reads no view
                assert _rows(views, "SELECT count(DISTINCT patient_id) FROM v_discharges") == [(1,)]
            owner.close()
            # delivered again: nothing changes
            assert "rows of merged patients" not in _write(cur, late)
            # a chain: the survivor is merged on; every row follows to its end
            _write(cur, (merge("Z1", "M1", "2025-01-20T08:00:00+00:00"), 2, 0))
            assert _rows(cur, "SELECT DISTINCT patient_id FROM encounters") == [("Z1",)]
            assert _rows(cur, "SELECT encounter_id, registered_patient_id FROM encounters ORDER BY 1") == [
                ("E1", "M1"), ("E2", "X1")]
    finally:
        conn.close()
