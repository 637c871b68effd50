"""The per-event flow of ``process_adt`` (stream/README.md), over plain mappings.

The Faust agent hands this module its tables (``patients``, ``partition_state``, ``due``,
``models``) as ``MutableMapping``s and sends the returned :class:`Output`s. Keeping the flow
free of Faust means the same code runs under a dict in unit tests and under changelogged
RocksDB tables in the worker, and that every output is visibly a function of (state, message).

Why the pieces look the way they do:

* ``partition_state[p{n}]`` holds the partition's event-time watermark and the offset of the last
  message applied (``merge_offset``: of ``hospital.adt-merges``, the hops of patient merges). A
  message at or below that offset is skipped: Faust 0.15.3 can deliver a message again after a
  restart although its table writes were kept (#323/#517), and without the guard the
  re-delivery would count twice (or land in the DLQ as a duplicate event_id).
* While a merge that started on a partition is in flight (``waiting_for``: the A40's event_id),
  the partition's later messages are set aside unapplied (``waiting_through``: the last one);
  when the merge lands, the worker reads them back from Kafka and applies them in order
  (:meth:`AdtFlow.read_backs`). So a partition's outputs stay a function of its own message
  order, however long the merge's hops take (stream/domain/merges.py).
* A batch's writes land in four tables, key by key: a worker killed half-way through them left
  some patients a batch ahead of the partition's offset, and the re-processed batch went to the
  DLQ as duplicates (the SIGKILL drill, tests/test_faults.py). So ``partition_state[p{n}]`` also
  carries the batch's other writes (``redo``) and is written first, in one put; the first time a
  partition is touched after a (re)start or rebalance, its ``redo`` is written again. The
  partition's state is then the state after its last journaled batch, whatever the kill cut.
  The worker writes the other tables only once Kafka has the journal's changelog record
  (:meth:`AdtFlow.commit_journal`, then :meth:`AdtFlow.commit_state`): changelog topics are
  delivered independently, and a new host restoring from them must not find a patient written
  by a batch whose journal never arrived. For the same reason the next batch's journal, which
  replaces this one, waits until Kafka has this batch's writes (``Pipeline.state_sends``): on a
  cluster the changelog partitions live on different brokers, so nothing else orders them.
* ``models[p{n}]`` holds the partition's river model (bytes, checksummed by the domain) and the
  index of its alert budget, ``models[p{n}|{facility}|{chunk}]`` the budget's windows (the recent
  scores and LACE values of each facility on the partition) in chunks of 32 entries.
* ``due[p{n}:YYYY-MM-DD]`` lists ``[due time, patient_id]`` for the pending discharges falling due
  that day, so the watermark expires them without scanning every patient; the flow keeps each
  list's earliest due time in memory and reads the list only once something in it is due.
* ``models`` is read once and then kept live in memory; a model that learned is written back
  once per commit (a batch), not once per label, with the budget chunks that changed.
* ``failed_at`` of a dead letter is the partition watermark (event time), never the wall clock:
  a replay gives byte-identical DLQ records.
"""

from __future__ import annotations

import base64
import logging
import zlib
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any

import orjson
import zstandard
from pydantic import ValidationError

from contracts.events import (
    AdmissionEvent,
    Alert,
    AnyAdtEvent,
    CancellationEvent,
    DeadLetter,
    DischargeEvent,
    DischargeScore,
    MergeEvent,
    RegistrationEvent,
    TransferEvent,
    UpdateEvent,
    applied_as,
    dump,
    parse_adt,
    raw_text,
)
from stream.domain import health, kpis, merges, patient, withdrawals
from stream.domain.features import dense, discharge_features
from stream.domain.lace import lace_points
from stream.domain.model import OnlineRiskModel
from stream.domain.policy import WARM_LABELS, AlertBudget, alert_reasons
from stream.health_tally import HealthTally
from stream.kpi_tally import KpiTally, bundles
from stream.staged import PartitionScope, Staged
from wardstream.config import settings
from wardstream.kafka_io import key_partition

log = logging.getLogger(__name__)

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

# Output "topics" are named by their attribute on contracts.Topics (the app maps them to names).
SCORES, ALERTS, LABELS, ACCEPTED, DLQ = (
    "discharge_scores", "alerts", "readmission_labels", "adt_accepted", "dlq")
MODEL_HEALTH, HEALTH_PARTIALS = "model_health", "health_partials"  # stream/health_tally.py
KPI_PARTIALS = "kpi_partials"  # stream/kpi_tally.py
MERGES = "adt_merges"  # the hops of a patient merge (stream/domain/merges.py)
SOURCE_OFFSET = "source_offset"  # header of an accepted event: its offset on hospital.adt

LONG_WAIT = 1000  # messages set aside for one merge between two warnings


@dataclass(frozen=True)
class Output:
    """One message to send: ``topic`` is a :class:`contracts.events.Topics` attribute name."""

    topic: str
    key: str | bytes | None
    value: bytes
    route: str | None = None  # when set, the key whose partition the message goes to (not ``key``)
    partition: int | None = None  # when set, the partition it goes to
    headers: tuple[tuple[str, bytes], ...] = ()


def partition_key(partition: int) -> str:
    return f"p{partition}"


def taken_offset(entry: dict[str, Any] | None, field: str = "offset") -> int:
    """The last offset a ``partition_state`` entry says was taken (-1: none): for
    ``field="offset"`` (hospital.adt) applied or set aside while a merge is in flight, for
    ``"merge_offset"`` (hospital.adt-merges) applied.

    >>> taken_offset({"offset": 7, "waiting_for": "m", "waiting_through": 9}), taken_offset(None)
    (9, -1)
    """
    entry = entry or {}
    if field == "offset":
        return int(max(entry.get("offset", -1), entry.get("waiting_through", -1)))
    return int(entry.get(field, -1))


def due_key(partition: int, day: date) -> str:
    return f"p{partition}:{day.isoformat()}"


_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"  # the first bytes of a zstd frame (a zlib stream begins 0x78)
_compressor = zstandard.ZstdCompressor(level=1)


def _pack(writes: dict[str, Any]) -> str:
    """A batch journal as the table stores it: JSON, zstd level 1, base64. A 500-event batch of
    10 hospitals is ~1.5 MB of JSON, ~140 KB packed (well under Kafka's 1 MB record limit);
    zstd takes ~a third of zlib level 1's time for a smaller result (bench/README)."""
    raw = orjson.dumps(writes, option=orjson.OPT_NON_STR_KEYS)
    return base64.b64encode(_compressor.compress(raw)).decode("ascii")


def _unpack(packed: str | None) -> dict[str, Any]:
    """A journal :func:`_pack` wrote, or one deflated by zlib (how journals were packed before)."""
    if not packed:
        return {}
    data = base64.b64decode(packed)
    if data.startswith(_ZSTD_MAGIC):
        return orjson.loads(zstandard.ZstdDecompressor().decompress(data))
    return orjson.loads(zlib.decompress(data))


def alert_id(encounter_id: str) -> str:
    """Alert ids derive from the encounter: a replay or a duplicate upserts the same alert."""
    return f"alert-{encounter_id}"


class Brain:
    """A partition's online model and alert budget.

    Stored in the ``models`` table under the partition's key (model bytes, the budget's index)
    and, for the budget's windows, one key per chunk (:func:`budget_key`): a batch writes the
    chunks it changed, not the whole windows (stream/domain/policy.py)."""

    def __init__(self, model: OnlineRiskModel, policy: AlertBudget) -> None:
        self.model, self.policy = model, policy

    @property
    def warm(self) -> bool:
        """The model has learned enough labels to rank discharges (policy.WARM_LABELS)."""
        return self.model.n_learned >= WARM_LABELS

    @classmethod
    def from_entry(cls, entry: dict[str, Any] | None, chunk: Callable[[str], Any]) -> "Brain":
        """The brain stored as ``entry``, its budget's chunks read with ``chunk(name)``."""
        if not entry:
            return cls(OnlineRiskModel(), AlertBudget())
        model = OnlineRiskModel.from_bytes(base64.b64decode(entry["model"]))
        if "policy" in entry:  # the budget stored whole, as before the chunks
            return cls(model, AlertBudget.from_dict(entry["policy"]))
        return cls(model, AlertBudget.from_records(entry.get("budget") or {}, chunk))

    def to_entry(self) -> dict[str, Any]:
        return {
            "n_learned": self.model.n_learned,
            "model": base64.b64encode(self.model.to_bytes()).decode("ascii"),
            "budget": self.policy.index(),
        }


def budget_key(partition: int, chunk: str) -> str:
    """The ``models`` key of a chunk of the partition's alert budget (``{facility}|{chunk}``)."""
    return f"{partition_key(partition)}|{chunk}"


class AdtFlow:
    """Apply ADT messages of any partition to the tables; return the messages to send."""

    def __init__(
        self,
        *,
        source_topic: str,
        patients: MutableMapping[str, Any],
        partitions: MutableMapping[str, Any],
        due: MutableMapping[str, Any],
        models: MutableMapping[str, Any],
        alert_share: Callable[[str], float] | None = None,
        health: MutableMapping[str, Any] | None = None,
        kpi: MutableMapping[str, Any] | None = None,
    ) -> None:
        """``alert_share``: a facility's alert share k (default: the configuration's
        ``Settings.alert_share_for``, read here once). ``health``: the model-health aggregates
        and error detectors (stream/health_tally.py); ``kpi``: the KPI day partials
        (stream/kpi_tally.py); None: a dict of the flow's own."""
        self.source_topic = source_topic
        self.merges_topic = f"{source_topic}-merges"  # contracts.Topics.adt_merges
        self.alert_share = alert_share or settings().alert_share_for
        self._staged = [Staged(t) for t in (patients, partitions, due, models)]
        self.patients, self.partitions, self.due, self.models = self._staged
        # the tables a batch's journal (``redo``) covers, by the name it files them under
        self._journaled = {"patients": self.patients, "due": self.due, "models": self.models}
        self.health = Staged({} if health is None else health)
        self._staged.append(self.health)
        self._journaled["health"] = self.health
        self.tally = HealthTally(self.health)
        self.kpi = Staged({} if kpi is None else kpi)
        self._staged.append(self.kpi)
        self._journaled["kpi"] = self.kpi
        self.kpi_tally = KpiTally(self.kpi)
        self._resumed: set[int] = set()  # partitions whose last journal was re-applied
        self._brains: dict[int, Brain] = {}
        self._learned: set[int] = set()  # partitions whose model or budget changed since the last commit
        # (partition, day) -> earliest due time (epoch s) in that day's due list: the watermark
        # only reads the list once something in it is due
        self._due_floor: dict[tuple[int, date], float] = {}
        self._read_backs: list[tuple[int, range]] = []  # (partition, offsets) to apply now

    def commit(self, scope: PartitionScope | None = None) -> None:
        """Write the state of the processed message(s) to the tables (see :class:`Staged`)."""
        self.commit_journal(scope)
        self.commit_state(scope)

    def commit_journal(self, scope: PartitionScope | None = None) -> None:
        """First half of :meth:`commit`: each partition's offset, watermark and journal (``redo``:
        the batch's writes to the other tables), one write per partition.

        The worker waits until Kafka has these changelog records before :meth:`commit_state`,
        so a state restored from the changelogs never holds a write newer than its journal.
        A model that learned, or an error detector, is serialized here, once per commit, not
        once per label.
        """
        self.kpi_tally.stage()
        self.tally.stage()
        for partition in sorted(self._learned):
            self.models.partition = partition
            brain = self._brains[partition]
            self.models[partition_key(partition)] = brain.to_entry()
            for chunk, entries in brain.policy.changes().items():
                if entries is None:
                    del self.models[budget_key(partition, chunk)]
                else:
                    self.models[budget_key(partition, chunk)] = entries
        self._learned.clear()
        redo: dict[int, dict[str, dict[str, Any]]] = {}
        for name, t in self._journaled.items():
            for key, (partition, value) in t.pending.items():
                redo.setdefault(partition, {}).setdefault(name, {})[key] = Staged.plain(value)
        for partition, writes in redo.items():  # every written partition processed a message
            pkey = partition_key(partition)
            self.partitions.partition = partition
            self.partitions[pkey] = {**self.partitions[pkey], "redo": _pack(writes)}
        self.partitions.commit(scope)

    def commit_state(self, scope: PartitionScope | None = None) -> None:
        """Second half of :meth:`commit`: the journaled writes themselves."""
        for t in self._journaled.values():
            t.commit(scope)

    def _resume(self, partition: int) -> None:
        """Write the partition's last journaled batch again (once after a start or rebalance):
        a kill may have cut its writes short."""
        if partition in self._resumed:
            return
        self._resumed.add(partition)
        entry = self.partitions.table.get(partition_key(partition)) or {}
        for name, writes in _unpack(entry.get("redo")).items():
            Staged.write(self._journaled[name].table, writes.items())

    def health_partials(self) -> list[Output]:
        """The health day records the staged batch changed, for ``hospital.health-partials``
        (send them with the batch's outputs, before :meth:`commit`; stream/health_tally.py)."""
        return [Output(HEALTH_PARTIALS, key, value, route=facility_id)
                for key, facility_id, value in self.tally.partials()]

    def kpi_partials(self, partitions: int | None = None) -> list[Output]:
        """The KPI day partials the staged batch changed, for ``hospital.kpi-partials`` (send
        them with the batch's outputs, before :meth:`commit`): one bundle per partition of the
        topic (``partitions``, default WARDSTREAM_ADT_PARTITIONS; stream/kpi_tally.py)."""
        n = partitions or settings().adt_partitions
        return [Output(KPI_PARTIALS, None, value, partition=p)
                for p, value in bundles(self.kpi_tally.partials(), lambda route: key_partition(route, n))]

    def partials(self, partitions: int | None = None) -> list[Output]:
        """Both kinds of partials of the staged batch."""
        return self.kpi_partials(partitions) + self.health_partials()

    def rollback(self) -> None:
        self.kpi_tally.forget()
        self._read_backs.clear()
        for t in self._staged:
            t.rollback()
        self.forget_cache()  # the live models may have learned from what is rolled back

    # ------------------------------------------------------------------ state access

    def forget_cache(self) -> None:
        """Drop what is cached from the tables (call on rebalance: the tables are the truth)."""
        self._brains.clear()
        self._learned.clear()
        self._due_floor.clear()
        self._resumed.clear()
        self.kpi_tally.drop_cache()
        self.tally.forget()

    def brain(self, partition: int) -> Brain:
        """The partition's model and policy: read from the table once, then kept live in memory."""
        cached = self._brains.get(partition)
        if cached is None:
            cached = self._brains[partition] = Brain.from_entry(
                self.models.get(partition_key(partition)), lambda chunk: self.models.get(budget_key(partition, chunk)))
        return cached

    def applied_offset(self, partition: int, field: str = "offset") -> int:
        """The offset of the last message taken on ``partition`` of ``hospital.adt``: applied, or
        set aside while a merge is in flight (-1 for none); with ``field="merge_offset"``, of
        ``hospital.adt-merges``."""
        self._resume(partition)
        return taken_offset(self.partitions.get(partition_key(partition)), field)

    def read_backs(self) -> list[tuple[int, range]]:
        """The ``hospital.adt`` messages set aside while a merge was in flight, as ``(partition,
        offsets)``, once the merges that landed in the last step let them through: the caller
        reads them back from Kafka and hands each to :meth:`process` now, in order."""
        out, self._read_backs = self._read_backs, []
        return out

    def _state(self, patient_id: str) -> patient.PatientState | None:
        d = self.patients.get(patient_id)
        return None if d is None else patient.PatientState.from_dict(d)

    def _save(self, state: patient.PatientState) -> None:
        self.patients[state.patient_id] = state.to_dict()

    # ------------------------------------------------------------------ the flow

    def process(self, raw: bytes | None, partition: int, offset: int,
                key: bytes | None = None, *, commit: bool = True) -> list[Output]:
        """Steps 1-5 of stream/README.md for one message of ``hospital.adt``.

        With ``commit=False`` the state changes wait for :meth:`commit` (send the outputs first,
        and :meth:`partials` after the batch).
        """
        return self._step(partition, commit, lambda: self._process(raw, partition, offset, key))

    def _step(self, partition: int, commit: bool, step: Callable[[], list[Output]]) -> list[Output]:
        """Run ``step`` with the tables' writes filed under ``partition``; roll the staged state
        back if it raises; commit it unless ``commit`` is false."""
        for t in self._staged:
            t.partition = partition
        try:
            out = step()
        except BaseException:
            self.rollback()
            raise
        if commit:
            self.commit()
        return out

    def _process(self, raw: bytes | None, partition: int, offset: int,
                 key: bytes | None) -> list[Output]:
        pkey = partition_key(partition)
        self._resume(partition)
        if offset <= self.applied_offset(partition):
            log.info("skip already applied message partition=%s offset=%s", partition, offset)
            return []
        entry = self.partitions.get(pkey) or {}
        if entry.get("waiting_for"):  # a merge started here is in flight
            self._mark(pkey, waiting_through=offset)  # read back and applied when it lands
            waiting = offset - int(entry.get("offset", -1))
            if waiting % LONG_WAIT == 0:
                log.warning("partition %s: %d messages wait for the merge that started at offset %s "
                            "(its hops on hospital.adt-merges have not come back)",
                            partition, waiting, entry.get("offset"))
            return []
        watermark = self._watermark(partition)
        out: list[Output] = []
        try:
            event = applied_as(parse_adt(raw if raw is not None else b""))  # A06 / A07: what they act as
        except (ValidationError, ValueError) as exc:
            out.append(self._dead_letter(raw, key, _contract_reason(exc), partition, offset, watermark))
            self._done(pkey, watermark, offset)
            return out
        watermark = self._apply(event, raw, key, partition, offset, watermark, out)
        self._done(pkey, watermark, offset)
        return out

    def _apply(self, event: AnyAdtEvent, raw: bytes | None, key: bytes | None, partition: int, offset: int,
               watermark: datetime | None, out: list[Output]) -> datetime | None:
        """Steps 1 (the patient's checks) to 6 for a decoded event; the partition's watermark
        after it."""
        state = self._state(event.patient_id)
        reason = patient.check(state, event, watermark)
        if reason is not None:
            log.info("dlq event_id=%s partition=%s offset=%s reason=%s",
                     event.event_id, partition, offset, reason)
            out.append(self._dead_letter(raw, key, reason, partition, offset, watermark))
            return watermark

        brain = self.brain(partition)
        learned = False
        watermark = self._advance(partition, watermark, event, brain, out)
        state = self._state(event.patient_id)  # the expiry may have changed it

        out.append(Output(ACCEPTED, key, raw, partition=partition,
                          headers=((SOURCE_OFFSET, str(offset).encode()),)))
        if isinstance(event, AdmissionEvent):
            state, outcomes = patient.apply_admission(state, event)
            self._save(state)
            self.kpi_tally.add(kpis.for_admission(event))
            learned |= self._labels(outcomes, brain, out)
        elif isinstance(event, (TransferEvent, UpdateEvent)):
            assert state is not None and state.open is not None  # check() guarantees it
            before = state.open
            if isinstance(event, TransferEvent):
                state = patient.apply_transfer(state, event)
            else:
                state = patient.apply_update(state, event)
            self._save(state)
            self.kpi_tally.add(kpis.for_transfer(event, before.department, before.attending_provider_id))
        elif isinstance(event, RegistrationEvent):
            self._save(patient.apply_registration(state, event))  # no bed: no KPI, no score
        elif isinstance(event, MergeEvent):  # step 1 of stream/domain/merges.py
            self._save(merges.start(state, event))
            self._mark(partition_key(partition), waiting_for=str(event.event_id))
            out.append(_merge_record(event.prior_patient_id, {
                "step": "retire", "merge_id": str(event.event_id), "prior": event.prior_patient_id,
                "survivor": event.patient_id}))
        elif isinstance(event, CancellationEvent):
            assert state is not None  # check() guarantees it
            learned |= self._cancel(partition, state, event, watermark, brain, out)
        else:
            assert state is not None and state.open is not None and isinstance(event, DischargeEvent)
            # the discharge's own department and attending are the latest word: a stay known to
            # be elsewhere moves there first, so the census it leaves is the one it was counted in
            before = state.open
            self.kpi_tally.add(kpis.for_transfer(event, before.department, before.attending_provider_id))
            state = self._discharge(partition, state, event, watermark, brain, out)
            # a discharge older than the watermark by 30+ days (another patient's events ran
            # ahead on this partition) is already past due: label it now, not never
            state, late = patient.expire(state, watermark)
            learned |= self._labels(late, brain, out)
            self._save(state)

        if learned:
            self._learned.add(partition)
        return watermark

    def _advance(self, partition: int, watermark: datetime | None, event: AnyAdtEvent, brain: Brain,
                 out: list[Output]) -> datetime | None:
        """Step 2: the partition's watermark moves to the event's time when later (not to a far
        future one, which the patient's checks refuse), expiring what falls due."""
        if watermark is not None and event.occurred_at > watermark + patient.FAR_FUTURE:
            return watermark
        if watermark is None or event.occurred_at > watermark:
            if self._expire(partition, watermark, event.occurred_at, brain, out):
                self._learned.add(partition)
            watermark = event.occurred_at
        return watermark

    def process_merge(self, raw: bytes | None, partition: int, offset: int, *, commit: bool = True) -> list[Output]:
        """Steps 2 and 3 of a patient merge (stream/domain/merges.py) for one message of
        ``hospital.adt-merges``, whose offsets the partition's state keeps beside those of
        ``hospital.adt`` (``merge_offset``). ``commit`` as in :meth:`process`."""
        return self._step(partition, commit, lambda: self._process_merge(raw, partition, offset))

    def _process_merge(self, raw: bytes | None, partition: int, offset: int) -> list[Output]:
        if offset <= self.applied_offset(partition, "merge_offset"):
            log.info("skip already applied merge record partition=%s offset=%s", partition, offset)
            return []
        out: list[Output] = []
        try:
            rec = orjson.loads(raw or b"{}")
        except orjson.JSONDecodeError:
            rec = {}
        if rec.get("step") == "retire":
            retired, moved = merges.retire(self._state(rec["prior"]), rec["prior"], rec["survivor"])
            self._save(retired)
            out.append(_merge_record(rec["survivor"], {**rec, "step": "absorb", "state": moved}))
        elif rec.get("step") == "absorb":
            state = self._state(rec["survivor"])
            if state is not None and state.merged_into is not None:  # merged on since: follow it
                out.append(_merge_record(state.merged_into, {**rec, "survivor": state.merged_into}))
            elif state is None or rec["merge_id"] not in state.absorbed:
                self._absorb(partition, state, rec, out)
            self._landed(partition, rec["merge_id"])
        else:  # only the flow writes this topic: a record it cannot read is a bug, kept in the DLQ
            out.append(self._dead_letter(raw, None, "merge record without a known step", partition, offset,
                                         self._watermark(partition), self.merges_topic))
        self._mark(partition_key(partition), merge_offset=offset)
        return out

    def _absorb(self, partition: int, state: patient.PatientState | None, rec: dict[str, Any],
                out: list[Output]) -> None:
        """Step 3 of a merge: the prior's history in, then what of it is past due at the
        partition's watermark expires. These labels are sent and counted but not learned (they
        depend on the prior's state as the retire found it: stream/domain/merges.py)."""
        brain, survivor = self.brain(partition), rec["survivor"]
        state, outcomes, moved = merges.absorb(state, survivor, rec["state"], rec["merge_id"])
        for pending in moved:
            self._file_due(partition, pending, survivor)
        self._labels(outcomes, brain, out, learn=False)
        watermark = self._watermark(partition)
        if watermark is not None:
            state, late = patient.expire(state, watermark)
            self._labels(late, brain, out, learn=False)
        self._save(state)

    def _landed(self, partition: int, merge_id: str) -> None:
        """The absorb of ``merge_id`` reached its survivor's partition: if the merge started
        here, the messages set aside meanwhile are due to be read back (:meth:`read_backs`)."""
        pkey = partition_key(partition)
        entry = self.partitions.get(pkey) or {}
        if entry.get("waiting_for") != merge_id:
            return
        through = entry.get("waiting_through")
        self._mark(pkey, waiting_for=None, waiting_through=None)
        if through is not None:
            offsets = range(int(entry.get("offset", -1)) + 1, int(through) + 1)
            log.info("partition %s: merge landed; the %d messages set aside meanwhile are applied now",
                     partition, len(offsets))
            self._read_backs.append((partition, offsets))

    # ------------------------------------------------------------------ steps

    def _watermark(self, partition: int) -> datetime | None:
        mark = (self.partitions.get(partition_key(partition)) or {}).get("watermark")
        return None if mark is None else datetime.fromisoformat(mark)

    def _done(self, pkey: str, watermark: datetime | None, offset: int) -> None:
        self._mark(pkey, watermark=None if watermark is None else watermark.isoformat(), offset=offset)

    def _mark(self, pkey: str, **fields: Any) -> None:
        """Set ``fields`` of the partition's entry (None: remove it); the others stay (the
        journal, ``redo``, is that of the last batch that wrote keys until the commit has a
        newer one; each topic's offset moves only with its own messages)."""
        entry = {**(self.partitions.get(pkey) or {}), **fields}
        self.partitions[pkey] = {k: v for k, v in entry.items() if v is not None}

    def _expire(self, partition: int, old: datetime | None, new: datetime, brain: Brain,
                out: list[Output]) -> bool:
        """Watermark moves old -> new: false labels for pending discharges now past due."""
        if old is None:
            return False
        learned = False
        now = new.timestamp()
        day = old.date()
        while day <= new.date():
            floor = self._due_floor.get((partition, day))
            if floor is None or floor < now:
                learned |= self._expire_day(partition, day, new, brain, out)
            day += timedelta(days=1)
        return learned

    def _expire_day(self, partition: int, day: date, new: datetime, brain: Brain,
                    out: list[Output]) -> bool:
        """Expire the entries of one day's due list that are past due at ``new``."""
        key = due_key(partition, day)
        entries = self._due_entries(key)
        now = new.timestamp()
        past = [e for e in entries if e[0] < now]
        learned = False
        for _, pid in past:
            state = self._state(pid)
            if state is None:
                continue
            state, outcomes = patient.expire(state, new)
            if outcomes:
                self._save(state)
                learned |= self._labels(outcomes, brain, out)
        rest = [e for e in entries if e[0] >= now]
        if past:
            if rest:
                self.due[key] = rest
            else:
                del self.due[key]
        self._due_floor[(partition, day)] = min((e[0] for e in rest), default=float("inf"))
        return learned

    def _due_entries(self, key: str) -> list[list[Any]]:
        """A day's due list: ``[due time (epoch s), patient_id]`` in the order they were added."""
        return list(self.due.get(key) or ())

    def _labels(self, outcomes: list[patient.LabelOutcome], brain: Brain, out: list[Output],
                learn: bool = True) -> bool:
        """Send, count and (unless ``learn`` is false or the discharge came with a merge) learn
        each label; whether the model learned."""
        learned = False
        for o in outcomes:
            if learn and not o.pending.moved:
                brain.model.learn(dense(o.pending.features), o.readmitted)
                learned = True
            label = o.to_label()
            out.append(Output(LABELS, label.encounter_id, dump(label)))
            self.kpi_tally.add(kpis.for_label(o))
            out.extend(Output(MODEL_HEALTH, k, v) for k, v in self.tally.label(o))
        return learned

    def _discharge(self, partition: int, state: patient.PatientState, dis: DischargeEvent,
                   watermark: datetime, brain: Brain, out: list[Output]) -> patient.PatientState:
        state, ctx = patient.apply_discharge(state, dis)
        x = discharge_features(ctx)
        points = lace_points(dis.length_of_stay_days, ctx.open.admission_type, ctx.charlson,
                             ctx.ed_visits_6m)
        lace = int(sum(points.values()))
        score = float(brain.model.predict(x))
        top = brain.model.explain(x, k=3)
        # compared with the facility's scores before this one, then added to them
        decision = brain.policy.decide(dis.facility_id, dis.occurred_at, score, lace,
                                       self.alert_share(dis.facility_id), brain.warm)
        self._learned.add(partition)
        threshold, high_risk = decision.threshold, decision.high_risk
        scored = DischargeScore(
            encounter_id=dis.encounter_id, patient_id=dis.patient_id, facility_id=dis.facility_id,
            department=dis.department, attending_provider_id=dis.attending_provider_id,
            discharged_at=dis.occurred_at, score=score, lace=lace, threshold=threshold,
            high_risk=high_risk, model_version=str(brain.model.version), top_factors=top,
            alert_share=decision.alert_share, policy=decision.policy,
        )
        out.append(Output(SCORES, dis.encounter_id, dump(scored)))
        index = patient.is_index(dis)
        alert = None
        if high_risk and index:  # no care-team alert for a patient who died in hospital
            alert = Alert(
                alert_id=alert_id(dis.encounter_id), encounter_id=dis.encounter_id,
                patient_id=dis.patient_id, facility_id=dis.facility_id, department=dis.department,
                attending_provider_id=dis.attending_provider_id, discharged_at=dis.occurred_at,
                score=score, lace=lace, threshold=threshold,
                reasons=alert_reasons(top, lace, points),
                alert_share=decision.alert_share, policy=decision.policy,
            )
            out.append(Output(ALERTS, dis.encounter_id, dump(alert)))
        state = patient.remember_discharge(state, ctx.open, dis, high_risk, scored.model_dump(mode="json"),
                                           None if alert is None else alert.model_dump(mode="json"), x)
        self.kpi_tally.add(kpis.for_discharge(dis, high_risk))
        self.tally.discharge(dis.facility_id, dis.occurred_at, score, x, index)
        if index:
            pending = patient.PendingDischarge(
                encounter_id=dis.encounter_id, patient_id=dis.patient_id,
                facility_id=dis.facility_id, department=dis.department,
                attending_provider_id=dis.attending_provider_id, discharged_at=dis.occurred_at,
                features=x, score=score, lace=lace, threshold=threshold, high_risk=high_risk,
                subgroups=health.subgroups(ctx.open.sex, ctx.open.race, dis.payer, ctx.open.age),
            )
            state = patient.add_pending(state, pending)
            self._file_due(partition, pending, dis.patient_id)
        return state

    def _file_due(self, partition: int, pending: patient.PendingDischarge, owner: str) -> None:
        """List a pending discharge under its due day (the watermark expires it from there);
        ``owner``: the patient whose state holds it (after a merge, not the one discharged)."""
        day = pending.due_at.date()
        key = due_key(partition, day)
        entry = [pending.due_at.timestamp(), owner]
        entries = self._due_entries(key)
        if entry not in entries:
            self.due[key] = [*entries, entry]
            floor = self._due_floor.get((partition, day))
            if floor is not None:
                self._due_floor[(partition, day)] = min(floor, entry[0])

    def _cancel(self, partition: int, state: patient.PatientState, ev: CancellationEvent,
                watermark: datetime, brain: Brain, out: list[Output]) -> bool:
        """Withdraw what the cancelled event produced (stream/domain/withdrawals.py): its
        messages again marked withdrawn, its KPI contributions reverted (the day partials it
        touched are sent again, absolute), labels known again, discharges pending again."""
        state, w = withdrawals.cancel(state, ev, watermark)
        self._save(state)
        for message in w.withdrawn:
            topic = {DischargeScore: SCORES, Alert: ALERTS}.get(type(message), LABELS)
            out.append(Output(topic, message.encounter_id, dump(message)))
        self.kpi_tally.revert(w.revert)
        self.kpi_tally.add(w.add)
        for o in w.unlabelled:
            self.tally.count_label(o, -1)
        if w.discharge is not None:
            self._forget(partition, w.discharge, brain)
        for pending in w.pending:
            self._file_due(partition, pending, state.patient_id)
        return self._labels(w.labels, brain, out)

    def _forget(self, partition: int, closed: dict[str, Any], brain: Brain) -> None:
        """A withdrawn discharge leaves the facility's alert-budget window (later thresholds
        are those without it) and its day's model-health histograms."""
        s = DischargeScore.model_validate(closed["score"])
        if brain.policy.forget(s.facility_id, s.discharged_at, s.score, s.lace):
            self._learned.add(partition)  # the budget changed: saved with the model at the commit
        index = patient.is_index(DischargeEvent.model_validate(closed["discharge"]))
        self.tally.discharge(s.facility_id, s.discharged_at, s.score, closed.get("features") or {}, index, -1)

    def _dead_letter(self, raw: bytes | None, key: bytes | None, reason: str, partition: int, offset: int,
                     watermark: datetime | None, topic: str | None = None) -> Output:
        text, encoding = raw_text(raw)
        letter = DeadLetter(
            reason=reason, source_topic=topic or self.source_topic, source_partition=partition,
            source_offset=offset, raw=text, raw_encoding=encoding, failed_at=watermark or EPOCH,
        )
        return Output(DLQ, key, dump(letter))  # DESIGN.md: the DLQ keeps the original key


def _merge_record(patient_id: str, record: dict[str, Any]) -> Output:
    """A record of ``hospital.adt-merges`` for the partition that owns ``patient_id``."""
    return Output(MERGES, patient_id, orjson.dumps(record), route=patient_id)


def _contract_reason(exc: Exception) -> str:
    """A short reason without the offending values (they may hold patient data)."""
    if isinstance(exc, ValidationError):
        errs = exc.errors(include_url=False, include_input=False)
        parts = [f"{'.'.join(str(x) for x in e['loc']) or 'message'}: {e['type']}" for e in errs[:3]]
        return "contract: " + "; ".join(parts)
    return f"contract: {type(exc).__name__}"
