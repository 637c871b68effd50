"""The stream app's per-event flow and KPI aggregator over plain dicts (no broker, fast).

The Faust agents call exactly these objects with changelogged tables in place of the dicts, so
these tests pin the properties the worker relies on: determinism, restart from stored state,
the re-delivery guard, and KPI values that do not depend on when the flushes happen.
"""

from __future__ import annotations

import json
import random
from datetime import date

import orjson
import pytest

from producers.simulator import SimConfig
from stream.adt_flow import CONTRIBUTIONS, DLQ, LABELS, SCORES, AdtFlow, bundle
from stream.contracts import DeadLetter
from stream.kpi_aggregator import KpiAggregator
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
    assert {SCORES, LABELS, CONTRIBUTIONS} <= kinds


def test_restart_from_stored_state_continues_the_model(messages) -> None:
    whole = _run(_flow(_tables()), messages)
    tables = _tables()
    cut = len(messages) * 2 // 3
    first = _run(_flow(tables), messages[:cut])
    restored = _roundtrip(tables)
    assert all(entry["n_learned"] > 0 for entry in restored["models"].values())
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
    assert again == batch  # same ids, same contribution sources: consumers drop or upsert copies
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
        if key[0] in "he":  # health records and error detectors: h{p}|... / e{p}|...
            expected = int(key[1:].split("|")[0])
        else:
            expected = partition_of.get(key) if not key.startswith("p") else int(key[1:].split(":")[0])
        assert p == expected, key


def test_kpi_aggregator_drops_re_sent_contributions(messages) -> None:
    """Contributions re-sent by a re-processed ADT message arrive again at new offsets: added once."""
    contribs = _contributions(messages[:600])
    assert all(orjson.loads(raw)["src"] for raw in contribs)
    expected = _expected(contribs)

    days, meta = {}, {}
    agg = KpiAggregator(days=days, meta=meta, capacity={})
    resent = contribs[:400] + contribs[250:]  # a crash: 250..399 sent before it and again after it
    for i, raw in enumerate(resent[:300]):
        agg.add(raw, 0, i)
    restarted = KpiAggregator(days=json.loads(json.dumps(days)), meta=json.loads(json.dumps(meta)),
                              capacity={})
    for i, raw in enumerate(resent[300:], start=300):
        restarted.add(raw, 0, i)
    assert _final(restarted.flush()) == expected


def _bundled(messages, cuts: list[int], size: int = 200) -> list[bytes]:
    """The contribution messages the ADT agent sends for ``messages[a:b]``, for each batch
    ``(a, b)`` of consecutive ``cuts`` (the flow runs once over all of them)."""
    by_message: dict[tuple[int, int], list] = {}
    for o in _run(_flow(_tables()), messages):
        if o.topic == CONTRIBUTIONS:
            by_message.setdefault(tuple(orjson.loads(o.value)["src"][:2]), []).append(o)
    sent = []
    for a, b in zip(cuts, cuts[1:]):
        batch = [o for p, off, _, _ in messages[a:b] for o in by_message.get((p, off), [])]
        sent.extend(o.value for o in bundle(batch, size))
    return sent


def test_bundled_contributions_give_the_same_kpis_and_drop_re_sent_items(messages) -> None:
    """The ADT agent sends a batch's contributions bundled per key. A batch re-processed after a
    crash may be cut differently, so a bundle can hold items already added and new ones: the
    aggregator adds exactly the new ones."""
    msgs = messages[:900]
    expected = _expected(_contributions(msgs))

    first = _bundled(msgs, [0, 250, 500, 600])  # sent before a crash (the batch 500-600 not committed)
    assert len(first) < len(_contributions(msgs[:600])) / 3  # far fewer messages
    again = _bundled(msgs, [500, 670, 840, 900])  # re-processed from 500, other batch cuts
    days, meta = {}, {}
    agg = KpiAggregator(days=days, meta=meta, capacity={})
    offset = 0
    for raw in first:
        agg.add(raw, 0, offset)
        offset += 1
    restarted = KpiAggregator(days=json.loads(json.dumps(days)), meta=json.loads(json.dumps(meta)),
                              capacity={})
    for raw in again:
        restarted.add(raw, 0, offset)
        offset += 1
    assert _final(restarted.flush()) == expected


def test_a_capacity_arriving_late_re_sends_the_utilization_windows(messages) -> None:
    """Capacity comes from hospital.reference through the contributions topic, possibly after the
    provider's windows went out without it; a restart after that re-sends them too."""
    from producers.simulator import Simulation
    from stream.contracts import dump

    contribs = _contributions(messages[:400])
    provider = next(orjson.loads(raw)["dimension_id"] for raw in contribs
                    if orjson.loads(raw)["dimension"] == "provider")
    ref = next(p for p in Simulation(SimConfig(seed=7, start=date(2025, 1, 1), days=60)).reference.providers
               if p.provider_id == provider)
    key, record = KpiAggregator.capacity_record(dump(ref))
    assert key == f"provider|{provider}"
    reference = KpiAggregator(days={}, meta={}, capacity={})
    reference.add(record, 0, 0)
    days, meta = {}, {}
    late = KpiAggregator(days=days, meta=meta, capacity={})
    for i, raw in enumerate(contribs, start=1):
        reference.add(raw, 0, i)
        late.add(raw, 0, i)
    emitted = late.flush()
    assert any(k.startswith(f"provider_utilization|provider|{provider}|") and
               orjson.loads(v)["denominator"] == 0 for k, v in emitted)
    late.add(record, 0, len(contribs) + 1)
    restarted = KpiAggregator(days=json.loads(json.dumps(days)), meta=json.loads(json.dumps(meta)),
                              capacity={})  # stopped before the next flush
    resent = restarted.flush()
    assert resent and all(f"|provider|{provider}|" in k for k, _ in resent)  # that provider only
    expected = _final(reference.flush())
    assert _final(emitted + resent) == expected
    assert _final(emitted + late.flush()) == expected


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


def _contributions(messages) -> list[bytes]:
    return [o.value for o in _run(_flow(_tables()), messages) if o.topic == CONTRIBUTIONS]


def _final(pairs) -> dict[str, bytes]:
    return dict(pairs)


def _expected(contribs: list[bytes]) -> dict[str, bytes]:
    """The final KPI values of ``contribs`` added once each, by one aggregator, flushed once."""
    reference = KpiAggregator(days={}, meta={}, capacity={})
    for i, raw in enumerate(contribs):
        reference.add(raw, 0, i)
    return _final(reference.flush())


def test_kpi_values_do_not_depend_on_flush_timing(messages) -> None:
    contribs = _contributions(messages[: len(messages) // 2])
    capacity = {"F01-D001": 10}

    once = KpiAggregator(days={}, meta={}, capacity=capacity)
    for i, raw in enumerate(contribs):
        once.add(raw, 0, i)
    expected = _final(once.flush())

    rng = random.Random(3)
    often = KpiAggregator(days={}, meta={}, capacity=capacity)
    emitted: list[tuple[str, bytes]] = []
    for i, raw in enumerate(contribs):
        often.add(raw, 0, i)
        if rng.random() < 0.01:
            emitted.extend(often.flush())
    emitted.extend(often.flush())
    assert _final(emitted) == expected
    assert len(emitted) > len(expected)  # it did flush more than once


def test_kpi_restart_re_emits_what_no_flush_covered(messages) -> None:
    contribs = _contributions(messages[: len(messages) // 3])
    days, meta = {}, {}
    agg = KpiAggregator(days=days, meta=meta, capacity={})
    emitted: list[tuple[str, bytes]] = []
    half = len(contribs) // 2
    for i, raw in enumerate(contribs[:half]):
        agg.add(raw, 0, i)
    emitted.extend(agg.flush())
    for i, raw in enumerate(contribs[half:], start=half):
        agg.add(raw, 0, i)
    # stopped before the next flush; a new worker restores the tables
    restarted = KpiAggregator(days=json.loads(json.dumps(days)), meta=json.loads(json.dumps(meta)),
                              capacity={})
    restarted.add(contribs[-1], 0, len(contribs) - 1)  # a re-delivered one changes nothing
    emitted.extend(restarted.flush())

    assert _final(emitted) == _expected(contribs)


@pytest.fixture(scope="module")
def long_contributions() -> list[bytes]:
    """150 days of one small hospital's contributions: enough for day buckets to be pruned."""
    return _contributions(partitioned_messages(SimConfig(seed=11, start=date(2025, 1, 1), days=150, beds=64)))


@pytest.mark.parametrize("acknowledged", [False, True])
def test_a_flush_killed_before_kafka_acknowledged_it_is_sent_again(long_contributions, acknowledged) -> None:
    """A flush counts once Kafka has all its windows (``delivered``): a contribution added while
    they were in flight must not record them as flushed, or a worker killed then restarts
    without sending them (the SIGKILL drill found one provider's windows stale). Long enough
    that the restart's own re-sends (the last 31 days) cannot hide it."""
    contribs = long_contributions
    cut = len(contribs) // 3
    days, meta = {}, {}
    agg = KpiAggregator(days=days, meta=meta, capacity={})
    for i, raw in enumerate(contribs[:cut]):
        agg.add(raw, 0, i)
    sent = [kv for batch in agg.flush_batches() for kv in batch]
    if acknowledged:
        agg.delivered()
    for i, raw in enumerate(contribs[cut:], start=cut):  # the agent goes on meanwhile
        agg.add(raw, 0, i)
    # SIGKILL; a new worker restores the tables and sends what no delivered flush covered
    restarted = KpiAggregator(days=json.loads(json.dumps(days)), meta=json.loads(json.dumps(meta)),
                              capacity={})
    kept = sent if acknowledged else []  # what reached Kafka before the kill
    assert _final(kept + restarted.flush()) == _expected(contribs)


def test_kpi_day_buckets_leave_memory_but_not_the_values(long_contributions) -> None:
    """Buckets older than keep_days behind a dimension's last day are pruned from memory; the
    values, a restart from the tables, and late contributions for a pruned day are unchanged."""
    contribs = long_contributions
    reference = KpiAggregator(days={}, meta={}, capacity={"F01-D001": 10}, keep_days=10_000)
    for i, raw in enumerate(contribs):
        reference.add(raw, 0, i)

    days, meta = {}, {}
    pruned = KpiAggregator(days=days, meta=meta, capacity={"F01-D001": 10}, keep_days=60)
    rng = random.Random(5)
    emitted: list[tuple[str, bytes]] = []
    half = len(contribs) // 2
    for i, raw in enumerate(contribs[:half]):
        pruned.add(raw, 0, i)
        if rng.random() < 0.01:
            emitted.extend(pruned.flush())
    emitted.extend(pruned.flush())
    # a restart from the tables prunes too
    pruned = KpiAggregator(days=json.loads(json.dumps(days)), meta=json.loads(json.dumps(meta)),
                           capacity={"F01-D001": 10}, keep_days=60)
    for i, raw in enumerate(contribs[half:], start=half):
        pruned.add(raw, 0, i)
        if rng.random() < 0.01:
            emitted.extend(pruned.flush())
    emitted.extend(pruned.flush())
    facility = ("facility", "F01")
    assert len(pruned._buckets[facility]) <= 61 < len(reference._buckets[facility])

    # a late contribution for the first day (a new source), then the same one again (a copy)
    first = orjson.loads(contribs[0])
    late = orjson.dumps({**first, "src": [first["src"][0], 10**9, 0]})
    for i, raw in enumerate([late, late], start=len(contribs)):
        reference.add(raw, 0, i)
        pruned.add(raw, 0, i)
    emitted.extend(pruned.flush())
    expected = _final(reference.flush())
    assert _final(emitted) == expected
    assert any(k.endswith(f"|{first['day']}T00:00:00Z") for k in expected)  # the early windows went out again


def test_kpi_keep_days_must_hold_two_windows() -> None:
    with pytest.raises(ValueError, match="keep_days"):
        KpiAggregator(days={}, meta={}, capacity={}, keep_days=30)
