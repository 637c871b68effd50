"""The stream app's per-event flow and KPI combiner over plain dicts (no broker, fast).

The Faust agents call exactly these objects with changelogged tables in place of the dicts, so
these tests pin the properties the worker relies on: determinism, restart from stored state,
the re-delivery guard, and KPI values that do not depend on when the flushes happen.
"""

from __future__ import annotations

import base64
import json
import random
import zlib
from datetime import date

import orjson
import pytest
import zstandard

from producers.simulator import SimConfig
from stream.adt_flow import ACCEPTED, DLQ, LABELS, SCORES, AdtFlow
from contracts.events import DeadLetter
from stream.kpi_agent import ADT_HEADER, SENDER_EXPIRY_S, AdtProgress, HeldRecords, KpiAgent, progress_header
from stream.kpi_combiner import KpiCombiner
from stream.kpi_tally import capacity_partial
from flow_inputs import Message, flow_tables, partitioned_messages

_tables = flow_tables


@pytest.fixture(scope="module")
def messages() -> list[Message]:
    return partitioned_messages(SimConfig(seed=7, start=date(2025, 1, 1), days=60))


def _flow(tables: dict[str, dict]) -> AdtFlow:
    return AdtFlow(source_topic="hospital.adt", **tables)


def _run(flow: AdtFlow, msgs) -> list:
    out = []
    for p, off, key, raw in msgs:
        out.extend(flow.process(raw, p, off, key=key))
    return out


def _roundtrip(tables: dict[str, dict]) -> dict[str, dict]:
    """What a changelog restore gives: the same JSON values, fresh objects."""
    return {name: json.loads(json.dumps(t)) for name, t in tables.items()}


def test_same_input_same_output(messages) -> None:
    a = _run(_flow(_tables()), messages)
    b = _run(_flow(_tables()), messages)
    assert a == b
    kinds = {o.topic for o in a}
    assert {SCORES, LABELS, ACCEPTED} <= kinds


def test_restart_from_stored_state_continues_the_model(messages) -> None:
    whole = _run(_flow(_tables()), messages)
    tables = _tables()
    cut = len(messages) * 2 // 3
    first = _run(_flow(tables), messages[:cut])
    restored = _roundtrip(tables)
    brains = {k: v for k, v in restored["models"].items() if "|" not in k}  # not the budget's chunks
    assert brains and all(entry["n_learned"] > 0 for entry in brains.values())
    assert len(restored["models"]) > len(brains)
    second = _run(_flow(restored), messages[cut:])
    assert first + second == whole


def test_redelivered_messages_are_skipped(messages) -> None:
    tables = _tables()
    flow = _flow(tables)
    head = _run(flow, messages[:500])
    again = _run(flow, messages[400:500])  # Faust re-delivers after a restart: no effect
    assert again == []
    assert head + _run(flow, messages[500:]) == _run(_flow(_tables()), messages)


def test_a_batch_not_committed_is_re_processed_with_the_same_outputs(messages) -> None:
    """The worker's crash case: a batch processed and (partly) sent, state not yet committed."""
    tables = _tables()
    flow = _flow(tables)
    head = _run(flow, messages[:300])
    batch = [o for p, off, key, raw in messages[300:450]
             for o in flow.process(raw, p, off, key=key, commit=False)]
    flow.rollback()  # killed before the commit: the tables hold the state after message 300
    restarted = _flow(_roundtrip(tables))
    again = [o for p, off, key, raw in messages[300:450]
             for o in restarted.process(raw, p, off, key=key, commit=False)]
    restarted.commit()
    assert again == batch  # same ids: consumers upsert copies
    assert head + again + _run(restarted, messages[450:]) == _run(_flow(_tables()), messages)


class Killed(BaseException):
    """SIGKILL in the middle of a commit: the writes so far stay, the rest never happen."""


@pytest.mark.parametrize("survive", [0, 1, 3, 40, 200, 10_000])
def test_a_kill_half_way_through_a_commit_loses_nothing(messages, survive) -> None:
    """The worker's SIGKILL case: the batch's outputs are in Kafka and only ``survive`` of its
    table writes (across all four tables, in the order the commit makes them) reached RocksDB;
    the restarted worker re-processes the batch from what the tables hold."""
    writes = 0

    class Dying(dict):
        def __setitem__(self, key, value) -> None:
            nonlocal writes
            if writes == survive:
                raise Killed
            writes += 1
            super().__setitem__(key, value)

    tables = _tables()
    flow = _flow(tables)
    head = _run(flow, messages[:300])
    batch = [o for p, off, key, raw in messages[300:800]
             for o in flow.process(raw, p, off, key=key, commit=False)]
    for staged in flow._staged:
        staged.table = Dying(staged.table)
    try:
        flow.commit()
    except Killed:
        pass
    restarted = _flow(_roundtrip({n: dict(s.table) for n, s in zip(tables, flow._staged)}))
    again = [o for p, off, key, raw in messages[300:800]
             for o in restarted.process(raw, p, off, key=key, commit=False)]
    restarted.commit()
    assert not [o for o in again if o.topic == DLQ]
    assert set(again) <= set(batch)  # what a partition had committed is skipped, not sent anew
    assert head + batch + _run(restarted, messages[800:]) == _run(_flow(_tables()), messages)


def test_a_batch_that_writes_no_key_keeps_the_last_journal(messages) -> None:
    """A batch of dead letters writes only the partition's offset: the journal it keeps is the
    last batch that wrote keys, whose key writes may still be in flight to the changelogs."""
    tables = _tables()
    flow = _flow(tables)
    _run(flow, messages[:300])
    p = messages[299][0]
    journal = tables["partitions"][f"p{p}"]["redo"]
    offset = max(off for q, off, *_ in messages[:300] if q == p) + 1
    assert [o.topic for o in flow.process(b"not json", p, offset, key=b"x")] == [DLQ]
    assert tables["partitions"][f"p{p}"]["offset"] == offset
    assert tables["partitions"][f"p{p}"]["redo"] == journal


def test_a_journal_written_by_zlib_is_still_re_applied(messages) -> None:
    """Journals were deflated by zlib before zstd: a state restored from such a changelog still
    re-applies its last journal at start."""
    tables = _tables()
    _run(_flow(tables), messages[:300])
    p = messages[299][0]
    packed = tables["partitions"][f"p{p}"]["redo"]
    writes = orjson.loads(zstandard.ZstdDecompressor().decompress(base64.b64decode(packed)))
    assert writes["patients"]
    tables["partitions"][f"p{p}"]["redo"] = base64.b64encode(zlib.compress(orjson.dumps(writes))).decode()
    for name, keys in writes.items():  # a kill lost the batch's table writes
        for key in keys:
            tables[name].pop(key, None)
    restarted = _flow(_roundtrip(tables))
    restarted.process(b"not json", p, 10**6, key=b"x")
    assert all(restarted.patients.table.get(key) == value for key, value in writes["patients"].items())


def test_a_rolled_back_batch_leaves_the_kpi_partials_as_they_were(messages) -> None:
    """The KPI tally keeps decoded table entries from batch to batch: a batch rolled back and
    processed again by the same flow sends the same partials, and later batches those of a
    flow that never saw the rolled-back one."""
    def batch(flow, msgs) -> list[bytes]:
        for p, off, key, raw in msgs:
            flow.process(raw, p, off, key=key, commit=False)
        return [o.value for o in flow.kpi_partials(4)]

    cuts = [messages[i:i + 150] for i in range(0, 900, 150)]
    flow, clean = _flow(_tables()), _flow(_tables())
    for i, msgs in enumerate(cuts):
        if i == 3:
            batch(flow, msgs)
            flow.rollback()
        got, want = batch(flow, msgs), batch(clean, msgs)
        assert got == want, f"batch {i}"
        flow.commit()
        clean.commit()


def test_staged_days_say_how_far_a_batch_brings_the_combiner(messages) -> None:
    """The KPI agent settles while the combiner lags the records a worker sent
    (``KpiAgent._lagging``): a batch's latest record day per ADT partition, from its partials."""
    flow = _flow(_tables())
    batch = messages[:400]
    for p, off, key, raw in batch:
        flow.process(raw, p, off, key=key, commit=False)
    records = [r for o in flow.kpi_partials(4) for r in orjson.loads(o.value)]
    want: dict[int, date] = {}
    for r in records:
        day = date.fromisoformat(r["day"])
        want[r["partition"]] = max(day, want.get(r["partition"], day))
    assert flow.kpi_tally.staged_days() == want and len(want) == 4
    flow.commit()
    assert flow.kpi_tally.staged_days() == {}


def test_commit_files_each_write_under_its_partition(messages) -> None:
    """The agent commits a batch of several partitions; Faust needs each write's own partition."""
    tables = _tables()
    flow = _flow(tables)
    for p, off, key, raw in messages[:200]:
        flow.process(raw, p, off, key=key, commit=False)
    scopes: list[int] = []
    written: dict[str, int] = {}

    class Scope:
        def __init__(self, partition: int) -> None:
            self.partition = partition

        def __enter__(self) -> None:
            scopes.append(self.partition)

        def __exit__(self, *exc) -> None:
            scopes.append(-1)

    class Recording(dict):
        def __setitem__(self, key, value) -> None:
            written[key] = scopes[-1]
            super().__setitem__(key, value)

    for staged in flow._staged:
        staged.table = Recording()
    flow.commit(Scope)
    assert set(scopes[::2]) == {p for p, *_ in messages[:200]} and set(scopes[1::2]) == {-1}
    partition_of = {key.decode(): p for p, _, key, _ in messages[:200]}
    for key, p in written.items():
        if key[0] in "hek":  # health records, error detectors, KPI partials: h{p}|... / e{p}|... / k{p}|...
            expected = int(key[1:].split("|")[0])
        else:
            # patients by their own key; p{n}, p{n}:{day}, p{n}|{facility}|{chunk} by p{n}
            expected = partition_of.get(key) if not key.startswith("p") else int(key[1:].split(":")[0].split("|")[0])
        assert p == expected, key


def _partials(messages, cuts: list[int]) -> list[bytes]:
    """The ``hospital.kpi-partials`` messages (bundles of records) the ADT agent sends for
    ``messages``, processed in batches ``messages[a:b]`` for consecutive ``cuts`` (the partials
    of each batch after it)."""
    flow = _flow(_tables())
    sent = []
    for a, b in zip(cuts, cuts[1:]):
        for p, off, key, raw in messages[a:b]:
            flow.process(raw, p, off, key=key, commit=False)
        sent.extend(o.value for o in flow.kpi_partials())
        flow.commit()
    return sent


def _batched(messages, size: int = 250) -> list[bytes]:
    return _partials(messages, [*range(0, len(messages), size), len(messages)])


def _final(pairs) -> dict[str, bytes]:
    return dict(pairs)


def _expected(records: list[bytes], capacity: bytes | None = None) -> dict[str, bytes]:
    """The final KPI values of ``records`` put by one combiner, flushed once."""
    reference = KpiCombiner(days={})
    for raw in ([capacity] if capacity else []) + records:
        reference.put(raw)
    return _final(reference.flush())


def test_partials_replace_so_a_re_processed_batch_counts_once(messages) -> None:
    """A batch re-processed after a crash sends its partials again, possibly cut differently:
    they replace what was kept, so the windows equal those of one clean pass."""
    msgs = messages[:900]
    first = _partials(msgs, [0, 250, 500, 600])  # sent before a crash (the batch 500-600 not committed)
    again = _partials(msgs, [0, 250, 500, 670, 840, 900])[len(_partials(msgs, [0, 250, 500])):]
    clean = _batched(msgs)
    combiner = KpiCombiner(days={})
    for raw in first + again:
        combiner.put(raw)
    assert _final(combiner.flush()) == _expected(clean)


def test_kpi_values_do_not_depend_on_flush_timing_or_batch_cuts(messages) -> None:
    msgs = messages[: len(messages) // 2]
    expected = _expected(_batched(msgs, 500))
    rng = random.Random(3)
    often = KpiCombiner(days={})
    emitted: list[tuple[str, bytes]] = []
    for raw in _batched(msgs, 37):
        often.put(raw)
        if rng.random() < 0.01:
            emitted.extend(often.flush())
    emitted.extend(often.flush())
    assert _final(emitted) == expected
    assert len(emitted) > len(expected)  # it did flush more than once


@pytest.fixture(scope="module")
def long_partials() -> list[bytes]:
    """150 days of one small hospital's partials: enough for day buckets to be pruned."""
    return _batched(partitioned_messages(SimConfig(seed=11, start=date(2025, 1, 1), days=150, beds=64)))


@pytest.mark.parametrize("acknowledged", [False, True])
def test_a_restart_re_sends_what_no_acknowledged_flush_covered(long_partials, acknowledged) -> None:
    """The agent acknowledges a record only once a flush covering it is in Kafka, so a restart
    (from the table, as a changelog restore gives it) gets every later record again: records it
    already holds re-send their windows. Long enough that pruned days are involved."""
    records = long_partials
    cut = len(records) // 3
    days: dict = {}
    combiner = KpiCombiner(days=days)
    for raw in records[:cut]:
        combiner.put(raw)
    sent = combiner.flush()
    for raw in records[cut: 2 * cut]:  # the agent goes on meanwhile; no later flush reached Kafka
        combiner.put(raw)
    # SIGKILL; a new worker restores the table and Kafka delivers from the committed offset
    committed = cut if acknowledged else 0
    restarted = KpiCombiner(days=json.loads(json.dumps(days)))
    for raw in records[committed:]:
        restarted.put(raw)
    kept = sent if acknowledged else []  # what reached Kafka before the kill
    assert _final(kept + restarted.flush()) == _expected(records)


def _flushes(combiner: KpiCombiner, records: list[bytes], every: int, settle: bool) -> list[tuple[str, bytes]]:
    """``records`` put in order, a flush after every ``every`` th, one that does not settle at the end."""
    out: list[tuple[str, bytes]] = []
    for i, raw in enumerate(records, start=1):
        combiner.put(raw)
        if i % every == 0:
            out.extend(kv for batch in combiner.flush_batches(settle=settle) for kv in batch)
    return out + combiner.flush()


def test_settling_flushes_send_each_window_about_once_with_the_same_values(long_partials) -> None:
    """In a backlog the agent's flushes settle: a window's KPI waits until the event-time
    frontier is past what can still change it, so flushes crossing its days do not send it
    again and again; the last message per window is the same."""
    records = long_partials
    expected = _expected(records)
    settled = _flushes(KpiCombiner(days={}), records, 5, settle=True)
    live = _flushes(KpiCombiner(days={}), records, 5, settle=False)
    assert _final(settled) == expected == _final(live)
    assert len(settled) <= 1.05 * len(expected) and len(live) >= 1.2 * len(expected)


def test_settling_waits_for_the_input_partition_of_each_window(messages) -> None:
    """A dimension's records come on one hospital.kpi-partials partition, and the agent reads
    its partitions unevenly: here one runs the whole period ahead of the others. A window
    settles by the event time of its own input partition, so the others' windows are not sent
    as each of their days comes in (in a replayed year, 1.9 messages per window)."""
    routed = _routed(messages)
    ahead = [r for r in routed if r[0] == 0]
    combiner, sent = KpiCombiner(days={}), []
    for i, (partition, raw) in enumerate(ahead + [r for r in routed if r[0] != 0], start=1):
        combiner.put(raw, partition)
        if i % 5 == 0:
            sent.extend(kv for batch in combiner.flush_batches(settle=True) for kv in batch)
    sent.extend(combiner.flush())
    expected = _expected([raw for _, raw in routed])
    assert _final(sent) == expected and len(ahead) < len(routed)
    assert len(sent) <= 1.05 * len(expected), f"{len(sent)} messages for {len(expected)} windows"


Routed = list[tuple[int, bytes]]  # (hospital.kpi-partials partition of 4, bundle of records)


def _routed_batches(messages, size: int = 250) -> list[Routed]:
    """What one worker's ADT agent sends to hospital.kpi-partials for ``messages``, per batch of
    ``size``."""
    flow, batches = _flow(_tables()), []
    for a in range(0, len(messages), size):
        for p, off, key, raw in messages[a:a + size]:
            flow.process(raw, p, off, key=key, commit=False)
        batches.append([(o.partition, o.value) for o in flow.kpi_partials(4)])
        flow.commit()
    return batches


def _routed(messages, size: int = 250) -> Routed:
    return [r for batch in _routed_batches(messages, size) for r in batch]


def _self_settled(flushes: list[Routed], sent_day: date) -> tuple[list[tuple[str, bytes]], list[bool]]:
    """The KPI agent's flushes, one after each list of ``flushes``, when only the combiner can
    tell a backlog (this worker's ADT side not behind): a flush settles while
    :meth:`KpiCombiner.lagging`, given ``sent_day``, the latest day this worker's ADT side sent."""
    combiner, sent, settled = KpiCombiner(days={}), [], []
    for taken in flushes:
        for partition, raw in taken:
            combiner.put(raw, partition)
        settled.append(combiner.lagging(sent_day))
        sent.extend(kv for batch in combiner.flush_batches(settle=settled[-1]) for kv in batch)
    return sent + combiner.flush(), settled


def _every(routed: Routed, n: int = 5) -> list[Routed]:
    return [routed[i:i + n] for i in range(0, len(routed), n)]


def _last_day(bundles: list[bytes]) -> date:
    return max(date.fromisoformat(r["day"]) for raw in bundles for r in orjson.loads(raw) if r.get("day"))


def test_a_combiner_reading_behind_the_adt_side_settles_by_itself(messages) -> None:
    """The worker's ADT side is done, and Faust reads one hospital.kpi-partials partition the
    whole period before the others: the combiner sees the others' records weeks behind what
    was sent (``KpiCombiner.lagging``), so the flushes settle until it has caught up, and each
    window goes out about once. A live stream, in order, does not settle."""
    batches = _routed_batches(messages)
    routed = [r for batch in batches for r in batch]
    expected = _expected([raw for _, raw in routed])
    end = _last_day([raw for _, raw in routed])
    uneven = [r for r in routed if r[0] == 0] + [r for r in routed if r[0] != 0]
    sent, settled = _self_settled(_every(uneven), end)
    assert _final(sent) == expected and all(settled[:-1])
    assert len(sent) <= 1.05 * len(expected), f"{len(sent)} messages for {len(expected)} windows"
    live, settled = [], []  # a flush after each batch, the ADT side that far
    combiner = KpiCombiner(days={})
    for batch in batches:
        for partition, raw in batch:
            combiner.put(raw, partition)
        settled.append(combiner.lagging(_last_day([raw for _, raw in batch])))
        live.extend(combiner.flush())
    assert _final(live) == expected and not any(settled)


def test_a_combiner_settles_while_another_workers_adt_side_is_behind(messages) -> None:
    """Two workers, each with two ADT partitions; the second's ADT side runs at half the
    first's pace and finishes long after it. The first worker's combiner takes both workers'
    partials: it settles while the second's records trail the first's in event time, though
    its own ADT side is not behind."""
    ahead = _routed([m for m in messages if m[0] < 2])
    behind = _routed([m for m in messages if m[0] >= 2])
    order: Routed = []
    for i, bundle in enumerate(ahead):  # one of the second worker's bundles per two of the first's
        order.append(bundle)
        if i % 2 == 0 and i // 2 < len(behind):
            order.append(behind[i // 2])
    order += behind[(len(ahead) + 1) // 2:]
    assert sorted(order) == sorted(ahead + behind)
    expected = _expected([raw for _, raw in order])
    end = _last_day([raw for _, raw in ahead])
    sent, settled = _self_settled(_every(order), end)
    assert _final(sent) == expected and sum(settled) > len(settled) // 2
    # the last 2 days go out live (4.3 messages per window here had every flush gone out live)
    assert len(sent) <= 1.1 * len(expected), f"{len(sent)} messages for {len(expected)} windows"


def test_a_flush_interval_with_no_partial_keeps_the_lagging_answer_while_partials_wait(messages) -> None:
    """Faust delivers the partials in bursts, seconds apart: a flush with none put since the
    last one keeps the agent's last answer while partials wait on its input (else it would send
    everything held), and goes live once none wait."""
    agent = KpiAgent.__new__(KpiAgent)  # the decision only: no app
    agent.combiner, agent.sent_day, agent._lag = KpiCombiner(days={}), lambda: None, False
    waits = True
    agent._partials_waiting = lambda: waits
    routed = _routed(messages)
    for partition, raw in [r for r in routed if r[0] == 0] + [r for r in routed if r[0] == 1][:2]:
        agent.combiner.put(raw, partition)
    assert agent._lagging()  # input partition 1 is weeks behind 0
    agent.combiner.flush_batches(settle=True)
    assert agent._lagging() and agent._lagging()  # nothing put since, partials wait
    waits = False
    assert not agent._lagging()


def test_a_restart_after_settling_flushes_re_sends_what_they_held(long_partials) -> None:
    """The agent acknowledges a record a settling flush covered only once the frontier reaches
    its release day (``HeldRecords``), so the records behind a KPI still held at a crash come
    again and hold it again: nothing held is lost. Acknowledging at the flush would lose some."""
    records = long_partials
    expected = _expected(records)
    cut = 2 * len(records) // 3
    days: dict = {}
    combiner, held = KpiCombiner(days=days), HeldRecords[int]()
    sent: list[tuple[str, bytes]] = []
    acked = 0
    for i, raw in enumerate(records[:cut]):
        combiner.put(raw)
        if i % 3 == 2:
            batches = combiner.flush_batches(settle=True)
            frontier, release = combiner.frontier, combiner.release_day()
            sent.extend(kv for batch in batches for kv in batch)
            held.covered(list(range(acked + len(held), i + 1)), release)
            acked += len(held.settled(frontier, settle=True))
    assert 0 < acked < cut and combiner._held  # KPIs held and their records not acknowledged
    table = json.dumps(days)  # SIGKILL: the next worker restores the table ...
    restarted = KpiCombiner(days=json.loads(table))
    for raw in records[acked:]:  # ... and gets the records from the committed offset
        restarted.put(raw)
    assert _final(sent + restarted.flush()) == expected
    naive = KpiCombiner(days=json.loads(table))  # had every flushed record been acknowledged
    for raw in records[max(i for i in range(cut) if i % 3 == 2) + 1:]:
        naive.put(raw)
    assert _final(sent + naive.flush()) != expected


def test_a_capacity_arriving_late_re_sends_the_utilization_windows(messages) -> None:
    """Capacity travels hospital.kpi-partials as one more record, possibly after the provider's
    windows went out without it; it replaces the one kept and re-sends that provider's windows."""
    from producers.simulator import Simulation

    records = _batched(messages[:400])
    provider = next(r["dimension_id"] for bundle in records for r in orjson.loads(bundle)
                    if r["dimension"] == "provider")
    ref = next(p for p in Simulation(SimConfig(seed=7, start=date(2025, 1, 1), days=60)).reference.providers
               if p.provider_id == provider)
    key, route, capacity = capacity_partial(ref.provider_id, ref.facility_id, ref.capacity)
    assert route == f"provider|{provider}" and key == f"provider|{provider}|capacity"
    late = KpiCombiner(days={})
    for raw in records:
        late.put(raw)
    emitted = late.flush()
    assert any(k.startswith(f"provider_utilization|provider|{provider}|") and
               orjson.loads(v)["denominator"] == 0 for k, v in emitted)
    late.put(capacity)
    resent = late.flush()
    assert resent and all(f"|provider|{provider}|" in k for k, _ in resent)  # that provider only
    assert _final(emitted + resent) == _expected(records, capacity)


def test_kpi_day_buckets_leave_memory_but_not_the_values(long_partials) -> None:
    """Buckets older than keep_days behind a dimension's last day are pruned from memory; the
    values, a restart from the table, and a late change to a pruned day are unchanged."""
    records = long_partials
    first = orjson.loads(records[0])[0]  # the first record of the first bundle
    late = orjson.dumps([{**first, "micro": {**first["micro"], "discharges": 99 * 10**6}}],
                        option=orjson.OPT_SORT_KEYS)  # a correction of the first day
    expected = _expected(records + [late])
    days: dict = {}
    pruned = KpiCombiner(days=days, keep_days=60)
    rng = random.Random(5)
    emitted: list[tuple[str, bytes]] = []
    half = len(records) // 2
    for raw in records[:half]:
        pruned.put(raw)
        if rng.random() < 0.01:
            emitted.extend(pruned.flush())
    emitted.extend(pruned.flush())
    pruned = KpiCombiner(days=json.loads(json.dumps(days)), keep_days=60)  # a restart prunes too
    for raw in records[half:]:
        pruned.put(raw)
        if rng.random() < 0.01:
            emitted.extend(pruned.flush())
    emitted.extend(pruned.flush())
    facility = ("facility", "F01")
    assert len(pruned._buckets[facility]) <= 61
    pruned.put(late)
    emitted.extend(pruned.flush())
    assert _final(emitted) == expected
    assert any(k.endswith(f"|{first['day']}T00:00:00Z") for k in expected)  # the early windows went out again


def test_kpi_keep_days_must_hold_two_windows() -> None:
    with pytest.raises(ValueError, match="keep_days"):
        KpiCombiner(days={}, keep_days=30)


def test_bad_input_goes_to_the_dlq_with_its_source(messages) -> None:
    flow = _flow(_tables())
    p, off, key, raw = messages[0]
    _run(flow, [messages[0]])
    outs = flow.process(b"\xff\x00", p, off + 100, key=b"K")
    outs += flow.process(raw, p, off + 101, key=key)  # same event again
    letters = [DeadLetter.model_validate_json(o.value) for o in outs]
    assert [o.topic for o in outs] == [DLQ, DLQ]
    assert [(d.source_partition, d.source_offset) for d in letters] == [(p, off + 100), (p, off + 101)]
    assert letters[0].raw_encoding == "base64" and letters[0].reason.startswith("contract")
    assert letters[1].reason == "duplicate event_id"
    assert outs[0].key == b"K"




def _window_labels(records: list[bytes]) -> dict[tuple[str, str, str], list[tuple[date, str]]]:
    """Per (dimension, id): (day, facility of the highest ADT partition's record that day),
    sorted, from the records themselves."""
    top: dict[tuple[str, str, str], tuple[int, str]] = {}
    for raw in records:
        for r in orjson.loads(raw):
            if r.get("day") is not None:
                key = (r["dimension"], r["dimension_id"], r["day"])
                top[key] = max(top.get(key, (-1, "")), (r["partition"], r["facility_id"]))
    out: dict = {}
    for (dimension, dim_id, day), (_, facility) in sorted(top.items()):
        out.setdefault((dimension, dim_id), []).append((date.fromisoformat(day), facility))
    return out


def test_kpi_messages_do_not_depend_on_send_order_or_flush_timing() -> None:
    """Two workers (ADT partitions 0-1 and 2-3) send their bundles in either interleaving, the
    combiner flushes at random moments and restarts from its table: the last message per
    window is the same, facility_id included. A department name spans facilities; a window is
    labelled with the facility of the highest ADT partition's record on its last known day
    (the kpi_windows view picks it the same way), whenever it was sent."""
    msgs = partitioned_messages(SimConfig(seed=3, start=date(2025, 1, 1), days=20, facilities=2, beds=64))
    halves = [[m for m in msgs if m[0] in (0, 1)], [m for m in msgs if m[0] in (2, 3)]]
    sent = [_batched(half, 200) for half in halves]
    assert all(sent)
    expected = _expected(sent[0] + sent[1])
    assert _expected(sent[1] + sent[0]) == expected
    rng = random.Random(8)
    records = [r for pair in zip(sent[1], sent[0]) for r in pair] + sent[0][len(sent[1]):] + sent[1][len(sent[0]):]
    days: dict = {}
    combiner, emitted, unflushed = KpiCombiner(days=days), [], []
    for raw in records:
        combiner.put(raw)
        unflushed.append(raw)
        if rng.random() < 0.05:
            emitted.extend(combiner.flush())
            unflushed = []
        elif rng.random() < 0.01:  # a crash: a restart from the table gets the unflushed records again
            combiner = KpiCombiner(days=json.loads(json.dumps(days)))
            for again in unflushed:
                combiner.put(again)
    emitted.extend(combiner.flush())
    assert _final(emitted) == expected

    labels = _window_labels(records)
    spanning = set()
    for value in expected.values():
        v = orjson.loads(value)
        days_of = labels[(v["dimension"], v["dimension_id"])]
        end = date.fromisoformat(v["window_end"][:10])
        assert v["facility_id"] == [f for d, f in days_of if d < end][-1], v
        if v["dimension"] == "department":
            spanning.add((v["dimension_id"], v["facility_id"]))
    assert len({f for _, f in spanning}) == 2  # departments are labelled with either hospital


def test_a_kpi_side_apart_learns_the_adt_sides_backlog_from_the_partials_headers() -> None:
    """A KPI side in its own process (role ``kpis``) is behind while any ADT side's latest
    header says so; a sender silent for SENDER_EXPIRY_S (gone) no longer counts, the latest day
    any sender reported stays, and other headers are ignored."""
    now = [0.0]
    progress = AdtProgress(clock=lambda: now[0])
    assert not progress.behind() and progress.sent_day() is None
    progress.saw([(ADT_HEADER, b"host-a:1|1|2025-01-05")])
    progress.saw({ADT_HEADER: b"host-b:2|0|2025-01-03", "other": b"x"})
    assert progress.behind() and progress.sent_day() == date(2025, 1, 5)
    progress.saw([(ADT_HEADER, b"host-a:1|0|2025-01-06")])  # its backlog done
    assert not progress.behind() and progress.sent_day() == date(2025, 1, 6)
    progress.saw([(ADT_HEADER, b"host-b:2|1|")])
    now[0] = SENDER_EXPIRY_S - 1
    assert progress.behind()
    now[0] = SENDER_EXPIRY_S + 1  # host-b silent since: gone
    assert not progress.behind() and progress.sent_day() == date(2025, 1, 6)
    progress.saw(None)  # a message read back from Kafka carries none here
    assert progress_header(False, None)[0] == ADT_HEADER
