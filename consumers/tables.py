"""The sink's upsert statements, one per table, and the function that writes a Batch.

Each table's rows go in with one upsert, ``INSERT ... ON CONFLICT (key) DO UPDATE`` (idempotent),
fed one of two ways (``method="auto"``, the default, picks per table by row count):

* ``values``: multi-row ``INSERT ... VALUES`` (psycopg2 ``execute_values``), one statement per
  1,000 rows. Below :data:`COPY_MIN_ROWS` rows this is the cheaper path by far: a live stream's
  batches are small, and the staging path below cost PostgreSQL 25-27 ms of CPU per 5-20 message
  batch against 2-3 ms for this one (``python -m bench sink``, bench/README.md session 7);
* ``copy``: ``COPY`` into a per-session temporary staging table, then ``INSERT ... SELECT`` from
  it: ~25% cheaper for backlogs of thousands of rows per table, where COPY's speed pays for its
  fixed cost (create, truncate, copy, insert per table).

The merge rules match :class:`consumers.rows.Batch`:

* ``fill``: reference data, a non-null value replaces, a null keeps (stubs never erase);
* ``latest``: last writer wins, skipped when nothing changes (no dead tuples on replays);
* encounters: current department / attending by (event time, offset), other columns set once;
* ``first``: raw events, insert-only.

Nothing is deleted from the ADT facts: they come from the events the stream applied
(``hospital.adt-accepted``), so a dead letter never names a stored event, and a cancellation
marks the rows it withdraws (:func:`apply_cancellations`, V013). Only withdrawn outputs (scores,
alerts, labels) leave their tables (V011).
"""

from __future__ import annotations

import csv
import io
import operator
from dataclasses import dataclass

import orjson
from psycopg2.extras import execute_values

from consumers.cancellations import Resolution, Stored, mark_rows, resolve
from consumers.rows import ENCOUNTER_SET_ONCE, Batch
from contracts.events import applied_as, parse_adt
from stream.domain.kpis import FIELDS as KPI_FIELDS


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[str, ...]
    key: tuple[str, ...]
    policy: str  # fill | latest | first | patients | encounters
    casts: tuple[tuple[str, str], ...] = ()

    def _q(self, c: str) -> str:
        return f'"{c}"' if c in ("window", "check") else c  # SQL reserved words

    @property
    def template(self) -> str:
        casts = dict(self.casts)
        return "(" + ", ".join(f"%({c})s" + (f"::{casts[c]}" if c in casts else "") for c in self.columns) + ")"

    @property
    def stage(self) -> str:
        return f"_stage_{self.name}"

    @property
    def column_list(self) -> str:
        return ", ".join(self._q(c) for c in self.columns)

    @property
    def sql(self) -> str:
        """The upsert from ``VALUES %s`` (execute_values)."""
        return self.upsert_sql("VALUES %s")

    @property
    def copy_sql(self) -> str:
        """The upsert from the staging table filled by COPY."""
        return self.upsert_sql(f"SELECT {self.column_list} FROM {self.stage}")

    def upsert_sql(self, source: str) -> str:
        cols = self.column_list
        key = ", ".join(self._q(c) for c in self.key)
        rest = [c for c in self.columns if c not in self.key]
        head = f"INSERT INTO {self.name} AS t ({cols}) {source} ON CONFLICT ({key}) DO "
        q = self._q
        if self.policy == "first":
            return head + "NOTHING"
        if self.policy == "fill":
            sets = ", ".join(f"{q(c)} = COALESCE(EXCLUDED.{q(c)}, t.{q(c)})" for c in rest)
            changed = " OR ".join(f"(EXCLUDED.{q(c)} IS NOT NULL AND EXCLUDED.{q(c)} IS DISTINCT FROM t.{q(c)})"
                                  for c in rest)
            return head + f"UPDATE SET {sets}, updated_at = now() WHERE {changed}"
        if self.policy == "latest":
            sets = ", ".join(f"{q(c)} = EXCLUDED.{q(c)}" for c in rest)
            old = ", ".join(f"t.{q(c)}" for c in rest)
            new = ", ".join(f"EXCLUDED.{q(c)}" for c in rest)
            return head + f"UPDATE SET {sets} WHERE ({old}) IS DISTINCT FROM ({new})"
        if self.policy == "patients":
            sets = ", ".join(f"{c} = EXCLUDED.{c}" for c in rest)
            return head + (f"UPDATE SET {sets} WHERE EXCLUDED.as_of IS NOT NULL "
                           f"AND (t.as_of IS NULL OR EXCLUDED.as_of >= t.as_of)")
        if self.policy == "encounters":
            newer = ("(EXCLUDED.last_event_at, EXCLUDED.last_event_offset) "
                     ">= (t.last_event_at, t.last_event_offset)")
            sets = [f"{c} = CASE WHEN {newer} THEN EXCLUDED.{c} ELSE t.{c} END"
                    for c in ("department", "attending_provider_id", "last_event_at", "last_event_offset")]
            sets += [f"{c} = COALESCE(t.{c}, EXCLUDED.{c})" for c in ENCOUNTER_SET_ONCE]
            return head + "UPDATE SET " + ", ".join(sets) + ", updated_at = now()"
        raise ValueError(f"unknown policy {self.policy}")


# Write order: referenced tables before the tables whose foreign keys point at them.
TABLES: tuple[Table, ...] = (
    Table("facilities", ("facility_id", "name", "beds"), ("facility_id",), "fill"),
    Table("departments", ("facility_id", "department", "beds"), ("facility_id", "department"), "fill"),
    Table("providers", ("provider_id", "facility_id", "department", "capacity"), ("provider_id",), "fill"),
    Table("patients", ("patient_id", "age", "sex", "race", "payer", "chronic_conditions", "as_of"),
          ("patient_id",), "patients", (("chronic_conditions", "text[]"),)),
    Table("encounters", ("encounter_id", "patient_id", "facility_id", "department", "attending_provider_id",
                         *ENCOUNTER_SET_ONCE, "last_event_at", "last_event_offset"),
          ("encounter_id",), "encounters"),
    Table("adt_events", ("event_id", "event_type", "hl7_trigger", "occurred_at", "facility_id", "patient_id",
                         "encounter_id", "department", "attending_provider_id", "payload",
                         "source_partition", "source_offset"),
          ("event_id",), "first", (("event_id", "uuid"), ("payload", "jsonb"))),
    Table("patient_merges", ("prior_patient_id", "patient_id", "merged_at", "event_id", "source_partition",
                             "source_offset"), ("prior_patient_id",), "first", (("event_id", "uuid"),)),
    Table("diagnoses", ("encounter_id", "coded_at", "position", "icd10_code"),
          ("encounter_id", "coded_at", "position"), "latest"),
    Table("procedures", ("encounter_id", "position", "cpt_code"), ("encounter_id", "position"), "latest"),
    Table("charges", ("encounter_id", "patient_id", "facility_id", "department", "payer", "amount",
                      "charged_at"), ("encounter_id",), "latest"),
    Table("readmissions", ("encounter_id", "patient_id", "discharged_at", "readmitted",
                           "readmission_encounter_id", "known_at", "source_partition", "source_offset"),
          ("encounter_id",), "latest"),
    Table("discharge_scores", ("encounter_id", "patient_id", "facility_id", "department",
                               "attending_provider_id", "discharged_at", "score", "lace", "threshold",
                               "high_risk", "model_version", "top_factors", "alert_share", "policy",
                               "source_partition", "source_offset"),
          ("encounter_id",), "latest", (("top_factors", "jsonb"),)),
    Table("alerts", ("alert_id", "encounter_id", "patient_id", "facility_id", "department",
                     "attending_provider_id", "discharged_at", "score", "lace", "threshold", "reasons",
                     "alert_share", "policy", "source_partition", "source_offset"),
          ("alert_id",), "latest", (("reasons", "text[]"),)),
    Table("model_health", ("check_id", "check", "facility_id", "subject", "level", "value", "watch_at",
                           "act_at", "baseline", "n", "window_start", "window_end", "message",
                           "source_partition", "source_offset"),
          ("check_id",), "latest"),
    Table("kpi_partials", ("dimension", "dimension_id", "day", "adt_partition", "facility_id",
                           *(f"{f}_micro" for f in KPI_FIELDS), "patients"),
          ("dimension", "dimension_id", "day", "adt_partition"), "latest", (("patients", "text[]"),)),
    Table("withdrawn_outputs", ("output", "key", "withdrawn_at", "payload", "source_partition", "source_offset"),
          ("output", "key"), "latest", (("payload", "jsonb"),)),
    Table("dead_letters", ("source_topic", "source_partition", "source_offset", "reason", "raw",
                           "raw_encoding", "failed_at", "dlq_partition", "dlq_offset"),
          ("source_topic", "source_partition", "source_offset"), "latest"),
)
TABLE_NAMES = tuple(t.name for t in TABLES)


COPY_MIN_ROWS = 1000  # method "auto": a table with at least this many rows in a batch goes by COPY


def write_batch(cur, batch: Batch, method: str = "auto") -> dict[str, int]:
    """Upsert every row of ``batch`` in FK order, inside the caller's transaction; rows per table."""
    if method not in ("auto", "copy", "values"):
        raise ValueError(f"unknown write method {method!r}")
    written: dict[str, int] = {}
    for table in TABLES:
        if gone := batch.deletes(table.name):  # withdrawn outputs (V011)
            execute_values(cur, f"DELETE FROM {table.name} WHERE ({', '.join(table.key)}) IN (VALUES %s)", gone)
            written[f"{table.name} withdrawn"] = len(gone)
        rows = batch.rows(table.name)
        if not rows:
            continue
        if method == "copy" or (method == "auto" and len(rows) >= COPY_MIN_ROWS):
            _copy_upsert(cur, table, rows)
        else:
            execute_values(cur, table.sql, rows, template=table.template, page_size=1000)
        written[table.name] = len(rows)
    if resolved := apply_cancellations(cur, batch):
        written["encounters with cancellations"] = resolved
    if merged := apply_merges(cur, batch):
        written["rows of merged patients"] = merged
    return written


TABLE = {t.name: t for t in TABLES}


def apply_cancellations(cur, batch: Batch) -> int:
    """After a batch's upserts: derive again every row a cancellation changes for the batch's
    encounters that have one stored (:func:`consumers.cancellations.resolve`, from all their
    stored events), so the rows are a function of the stored events whatever the batching or
    replays. One indexed look-up per batch (V013's partial index); encounters resolved."""
    if not batch.adt_encounters:
        return 0
    cur.execute("SELECT DISTINCT encounter_id FROM adt_events WHERE event_type = 'cancellation' "
                "AND encounter_id = ANY(%s)", (sorted(batch.adt_encounters),))
    encounters = sorted(r[0] for r in cur.fetchall())
    if not encounters:
        return 0
    cur.execute("SELECT encounter_id, payload::text, source_partition, source_offset FROM adt_events "
                "WHERE encounter_id = ANY(%s)", (encounters,))
    events: dict[str, list[Stored]] = {e: [] for e in encounters}
    for encounter_id, payload, partition, offset in cur.fetchall():
        events[encounter_id].append(Stored(applied_as(parse_adt(payload)), partition, offset))
    write_resolutions(cur, [resolve(e, events[e]) for e in encounters])
    return len(encounters)


def apply_merges(cur, batch: Batch) -> int:
    """After a batch with ADT events (and after :func:`apply_cancellations`, which derives an
    encounter's patient from its events): point the encounters and ADT events of a merged MRN
    at its survivor, the end of a chain of merges (V016), keeping the MRN they were sent under.
    The rows that can need it are those of the batch's patients (its events, and every row of
    the MRNs its merges retire) and the encounters the batch touched (a cancellation derives
    theirs again); rows already pointed change nothing. One lookup of the whole (small) table
    of merges resolves the chains."""
    events = batch.rows("adt_events")
    if not events:
        return 0
    cur.execute("SELECT prior_patient_id, patient_id FROM patient_merges")
    into = dict(cur.fetchall())
    if not into:
        return 0
    pairs = _json([{"prior": p, "survivor": survivor_of(p, into)} for p in into])
    patients = sorted({r["patient_id"] for r in events} | {r["prior_patient_id"] for r in batch.rows("patient_merges")})
    n = 0
    for table, touched in (("encounters", "OR t.encounter_id = ANY(%s)"), ("adt_events", "")):
        cur.execute(f"UPDATE {table} t SET registered_patient_id = COALESCE(t.registered_patient_id, t.patient_id), "
                    f"patient_id = r.survivor FROM jsonb_to_recordset(%s::jsonb) AS r(prior text, survivor text) "
                    f"WHERE t.patient_id = r.prior AND (t.patient_id = ANY(%s) {touched})",
                    (pairs, patients, *([sorted(batch.adt_encounters)] if touched else [])))
        n += cur.rowcount
    return n


def survivor_of(patient_id: str, into: dict[str, str]) -> str:
    """Where a chain of merges ends (``into``: prior -> survivor); a cycle stops where it closes.

    >>> survivor_of("A", {"A": "B", "B": "C"}), survivor_of("C", {"A": "B"}), survivor_of("A", {"A": "B", "B": "A"})
    ('C', 'C', 'B')
    """
    seen = {patient_id}
    while (nxt := into.get(patient_id)) is not None and nxt not in seen:
        seen.add(nxt)
        patient_id = nxt
    return patient_id


def _json(rows: list[dict]) -> str:
    return orjson.dumps(rows).decode()


ENCOUNTER_DERIVED = tuple(c for c in TABLE["encounters"].columns if c != "encounter_id") + (
    "cancelled_by", "cancelled_at")
MARKS = ("cancelled_by", "cancelled_at")


def _set_marks(cur, table: str, record: str, match: str, rows: list[dict], marks: dict[str, str]) -> None:
    """``UPDATE table t SET mark = expression`` from ``rows`` (``jsonb_to_recordset`` ``r`` with
    the columns ``record``) where ``match`` holds and a mark changes (replays write nothing)."""
    sets = ", ".join(f"{c} = {e}" for c, e in marks.items())
    old, new = ", ".join(f"t.{c}" for c in marks), ", ".join(marks.values())
    cur.execute(f"UPDATE {table} t SET {sets} FROM jsonb_to_recordset(%s::jsonb) AS r({record}) "
                f"WHERE {match} AND ({old}) IS DISTINCT FROM ({new})", (_json(rows),))


def write_resolutions(cur, resolutions: list[Resolution]) -> None:
    """Write what :func:`~consumers.cancellations.resolve` derived: the events' marks, the
    encounter rows, the charges and codes that count (upserted, mark cleared) and the marks of
    those that no longer do. Each statement writes only rows that change (replays stay cheap)."""
    rows = mark_rows(resolutions)
    record = "cancelled_by uuid, cancelled_at timestamptz"
    _set_marks(cur, "adt_events", f"event_id uuid, {record}, stay_cancelled_by uuid, bed_department text, "
               "bed_attending_provider_id text", "t.event_id = r.event_id", rows["adt_events"],
               {c: f"r.{c}" for c in (*MARKS, "stay_cancelled_by", "bed_department", "bed_attending_provider_id")})
    new = ", ".join(f"r.{c}" for c in ENCOUNTER_DERIVED)
    old = ", ".join(f"e.{c}" for c in ENCOUNTER_DERIVED)
    cur.execute(f"UPDATE encounters e SET ({', '.join(ENCOUNTER_DERIVED)}, updated_at) = ({new}, now()) "
                f"FROM jsonb_populate_recordset(NULL::encounters, %s::jsonb) r "
                f"WHERE e.encounter_id = r.encounter_id AND ({old}) IS DISTINCT FROM ({new})",
                (_json(rows["encounters"]),))
    live = {"charges": [r.charge for r in resolutions if r.charge],
            **{t: [x for r in resolutions for c in r.codes if c.table == t for x in c.live]
               for t in ("diagnoses", "procedures")}}
    for table, table_rows in live.items():
        if table_rows:
            execute_values(cur, TABLE[table].sql, table_rows, template=TABLE[table].template, page_size=1000)
    _set_marks(cur, "charges", f"encounter_id text, {record}", "t.encounter_id = r.encounter_id",
               rows["charges"], {c: f"r.{c}" for c in MARKS})
    keep = "t.position < r.live_count"  # positions 0..n-1 are the codes that count
    for table, coded in (("diagnoses", "t.coded_at = r.coded_at"), ("procedures", "r.coded_at IS NULL")):
        _set_marks(cur, table, f"encounter_id text, coded_at text, live_count integer, {record}",
                   f"t.encounter_id = r.encounter_id AND {coded} AND ({keep} OR r.cancelled_by IS NOT NULL)",
                   [x for x in rows["codes"] if x["table"] == table],
                   {c: f"CASE WHEN {keep} THEN NULL ELSE r.{c} END" for c in MARKS})


def _copy_upsert(cur, table: Table, rows: list[dict]) -> None:
    # Session-local staging table, emptied at every commit (and gone with the connection).
    cur.execute(f"CREATE TEMP TABLE IF NOT EXISTS {table.stage} "
                f"(LIKE {table.name} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS")
    cur.execute(f"TRUNCATE {table.stage}")  # a batch written twice in one transaction
    arrays = tuple(c for c, cast in table.casts if cast.endswith("[]"))
    cur.copy_expert(f"COPY {table.stage} ({table.column_list}) FROM STDIN WITH (FORMAT csv, NULL '\\N')",
                    io.StringIO(to_csv(rows, table.columns, arrays)))
    cur.execute(table.copy_sql)


NULL = "\\N"  # COPY's NULL marker here: an empty field stays an empty string


def to_csv(rows: list[dict], columns: tuple[str, ...], arrays: tuple[str, ...] = ()) -> str:
    r"""CSV for ``COPY ... (FORMAT csv, NULL '\N')`` (C csv writer; lists become text[] literals).

    A string that is exactly ``\N`` would read back as NULL: ids and codes never are.

    >>> print(to_csv([{"a": None, "b": "x,y", "c": ["p", 'q"r']}, {"a": "", "b": 1.5, "c": []}],
    ...              ("a", "b", "c"), arrays=("c",)), end="")
    \N,"x,y","{""p"",""q\""r""}"
    ,1.5,{}
    """
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    get = operator.itemgetter(*columns)
    positions = [columns.index(c) for c in arrays]
    single = len(columns) == 1
    for r in rows:
        values = [NULL if v is None else v for v in ((get(r),) if single else get(r))]
        for i in positions:
            if values[i] is not NULL:
                values[i] = _array(values[i])
        writer.writerow(values)
    return buf.getvalue()


def _array(items: list) -> str:
    """A PostgreSQL text[] literal."""
    return "{" + ",".join('"' + str(x).replace("\\", "\\\\").replace('"', '\\"') + '"' for x in items) + "}"
