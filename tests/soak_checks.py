"""The chaos soak's pure parts (``tests/soak.py`` runs the processes): the seeded fault schedule,
the input's slices, the invariants' verdicts over data already read, the topic footprint read
from log segment files, and the printed tables.
"""

from __future__ import annotations

import random
import struct
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import orjson

from faults import Outputs, diff_dumps, diff_finals

FAULT_GAP_S = (30.0, 60.0)  # seconds between two faults
DOWN_S = (1.0, 5.0)  # how long a killed process stays down before its restart
NEW_HOST_SHARE = 1 / 3  # share of worker faults restarted on an empty state directory
BROKERS = 3


# ---------------------------------------------------------------------- the schedule (pure)


@dataclass(frozen=True)
class Fault:
    """One scheduled fault: SIGKILL ``target`` number ``index`` ``at`` seconds into the fault
    phase, restart it ``down_s`` later (a worker on an empty state directory if ``new_host``)."""

    at: float
    target: str  # "worker" | "broker" | "postgres"
    index: int  # worker 1..n, broker node id 1..3, 0 for PostgreSQL
    down_s: float
    new_host: bool = False

    def describe(self) -> str:
        """One line for the log.

        >>> Fault(31.5, "worker", 2, 2.0, new_host=True).describe()
        'SIGKILL worker 2, restart after 2.0 s on a new host (empty state directory)'
        >>> Fault(80.0, "postgres", 0, 1.0).describe()
        'crash PostgreSQL (immediate stop), start after 1.0 s'
        """
        if self.target == "postgres":
            return f"crash PostgreSQL (immediate stop), start after {self.down_s:.1f} s"
        where = " on a new host (empty state directory)" if self.new_host else (
            " on the same host" if self.target == "worker" else "")
        return f"SIGKILL {self.target} {self.index}, restart after {self.down_s:.1f} s{where}"


def plan_faults(seed: int, seconds: float, workers: int, pg_faults: bool = False,
                brokers: int = BROKERS) -> list[Fault]:
    """The seeded fault schedule of a fault phase of ``seconds``: one fault every 30-60 s, on a
    target drawn uniformly among workers, brokers (and PostgreSQL with ``pg_faults``).

    >>> plan = plan_faults(1, 600, workers=2)
    >>> plan == plan_faults(1, 600, workers=2), 9 <= len(plan) <= 20
    (True, True)
    >>> all(30 <= b.at - a.at <= 60 for a, b in zip(plan, plan[1:])) and plan[-1].at < 600
    True
    >>> sorted({f.target for f in plan_faults(3, 3600, 2, pg_faults=True)})
    ['broker', 'postgres', 'worker']
    >>> sorted({f.target for f in plan_faults(3, 3600, 2)})
    ['broker', 'worker']
    """
    rng = random.Random(seed)
    kinds = ["worker", "broker"] + (["postgres"] if pg_faults else [])
    plan: list[Fault] = []
    at = rng.uniform(*FAULT_GAP_S)
    while at < seconds:
        kind = rng.choice(kinds)
        index = {"worker": lambda: rng.randint(1, workers), "broker": lambda: rng.randint(1, brokers),
                 "postgres": lambda: 0}[kind]()
        down = rng.uniform(*DOWN_S)
        new_host = kind == "worker" and rng.random() < NEW_HOST_SHARE
        plan.append(Fault(round(at, 1), kind, index, round(down, 2), new_host))
        at += rng.uniform(*FAULT_GAP_S)
    return plan


def feed_times(seconds: float, slices: int) -> list[float]:
    """When to copy each input slice: evenly over the first 80% of the fault phase, so every
    slice meets faults and the last is in before the drain.

    >>> feed_times(100, 5)
    [0.0, 16.0, 32.0, 48.0, 64.0]
    """
    return [round(i * 0.8 * seconds / slices, 1) for i in range(slices)]


def slice_plan(plan, slices: int) -> list:
    """Cut a whole-topic :class:`consumers.replay.ReplayPlan` into ``slices`` consecutive plans,
    each with the next share of every partition (a slice may hold no range of some partition).

    >>> from consumers.replay import PartitionRange, ReplayPlan
    >>> p = ReplayPlan("s.", "s.hospital.adt", 2, (PartitionRange(0, 0, 9, 10), PartitionRange(1, 5, 7, 3)))
    >>> [[(r.partition, r.first, r.last) for r in s.ranges] for s in slice_plan(p, 3)]
    [[(0, 0, 2), (1, 5, 5)], [(0, 3, 6), (1, 6, 6)], [(0, 7, 9), (1, 7, 7)]]
    >>> sum(s.events for s in slice_plan(p, 4)) == p.events
    True
    """
    out = []
    for i in range(slices):
        ranges = []
        for r in plan.ranges:
            lo, hi = round(r.events * i / slices), round(r.events * (i + 1) / slices)
            if hi > lo:
                ranges.append(replace(r, first=r.first + lo, last=r.first + hi - 1, events=hi - lo))
        out.append(replace(plan, ranges=tuple(ranges)))
    return out


@dataclass
class Check:
    """One invariant's verdict; ``ok`` None is information, not a verdict."""

    name: str
    ok: bool | None
    detail: str


def table(checks: Sequence[Check]) -> str:
    """The final comparison, one line per invariant.

    >>> print(table([Check("a", True, "x"), Check("bb", False, "y"), Check("c", None, "z")]))
    invariant  result  detail
    a          pass    x
    bb         FAIL    y
    c          info    z
    """
    width = max(len("invariant"), *(len(c.name) for c in checks))
    lines = [f"{'invariant':{width}}  result  detail"]
    for c in checks:
        verdict = "info" if c.ok is None else ("pass" if c.ok else "FAIL")
        lines.append(f"{c.name:{width}}  {verdict:6}  {c.detail}")
    return "\n".join(lines)


def batch_records(segment: bytes) -> int:
    """Data records in a Kafka log segment (record batches v2; control batches left out): read
    from the files, so the footprint needs no broker call.

    >>> def batch(n, control=False):  # a 61-byte v2 batch header holding ``n`` records, no body
    ...     attrs = 0x20 if control else 0
    ...     return (struct.pack(">qi", 0, 49) + bytes(9) + struct.pack(">h", attrs) + bytes(34)
    ...             + struct.pack(">i", n))
    >>> batch_records(batch(3) + batch(1, control=True) + batch(2))
    5
    """
    records, pos = 0, 0
    while pos + 61 <= len(segment):
        length = struct.unpack_from(">i", segment, pos + 8)[0]
        if not struct.unpack_from(">h", segment, pos + 21)[0] & 0x20:
            records += struct.unpack_from(">i", segment, pos + 57)[0]
        pos += 12 + length
    return records


def footprint(namespace: str, data_dir: Path) -> list[tuple[str, int, int]]:
    """(topic without the namespace, messages, bytes on disk) of every topic of ``namespace`` in
    one broker's data directory (with replication 3, each broker holds a whole copy)."""
    per: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for segment in data_dir.glob(f"{namespace}*-[0-9]*/*.log"):
        topic = segment.parent.name.rsplit("-", 1)[0][len(namespace):]
        body = segment.read_bytes()
        per[topic][0] += batch_records(body)
        per[topic][1] += len(body)
    return sorted((t, n, size) for t, (n, size) in per.items())


def footprint_table(rows: Sequence[tuple[str, int, int]], adt_events: int) -> str:
    """Messages and bytes per ADT event, per topic (the deployment arithmetic's inputs).

    >>> print(footprint_table([("hospital.adt", 10, 5000), ("hospital.kpis", 150, 45000)], 10))
    topic          messages  per event  bytes/event  bytes/message
    hospital.adt         10       1.00          500            500
    hospital.kpis       150      15.00        4,500            300
    all                 160      16.00        5,000            312
    """
    width = max(len("topic"), *(len(t) for t, _, _ in rows))
    lines = [f"{'topic':{width}}  messages  per event  bytes/event  bytes/message"]
    total = ("all", sum(n for _, n, _ in rows), sum(b for _, _, b in rows))
    for t, n, size in [*rows, total]:
        lines.append(f"{t:{width}}  {n:8,}  {n / adt_events:9.2f}  {size / adt_events:11,.0f}  "
                     f"{size / max(n, 1):13,.0f}")
    return "\n".join(lines)


# ---------------------------------------------------------------------- the invariants (pure)


def check_first_scores(got: Sequence[dict], want: Sequence[dict]) -> Check:
    """Every encounter's first score message equal to the undisturbed run's (values in topic order).

    >>> a, b = {"encounter_id": "E1", "score": 0.2}, {"encounter_id": "E2", "score": 0.5}
    >>> check_first_scores([a, b, a], [a, b]).ok
    True
    >>> c = check_first_scores([{**a, "score": 0.3}, a, b], [a, b]); c.ok, c.detail
    (False, "2 encounters, 1 differ ['E1'], 0 extra; 3 score messages, 1 later ones unlike the first")
    """
    def first(values: Sequence[dict]) -> dict[str, dict]:
        out: dict[str, dict] = {}
        for v in values:
            out.setdefault(v["encounter_id"], v)
        return out

    mine, theirs = first(got), first(want)
    differ = [k for k in theirs if mine.get(k) != theirs[k]]
    extra = set(mine) - set(theirs)
    unlike = sum(1 for v in got if v != mine[v["encounter_id"]])
    return Check("every first score identical", not differ and not extra,
                 f"{len(theirs)} encounters, {len(differ)} differ {differ[:3]}, {len(extra)} extra; "
                 f"{len(got)} score messages, {unlike} later ones unlike the first")


def check_alerts(sent: Sequence[dict], final_ids: set[str], base_ids: set[str]) -> Check:
    """One alert id per encounter, each id always sent with the same contents, and the same
    alerts as the undisturbed run (a re-sent alert is allowed: the notifier keys on its id).

    >>> a = {"alert_id": "alert-E1", "encounter_id": "E1", "score": 0.9}
    >>> check_alerts([a, a], {"alert-E1"}, {"alert-E1"}).ok
    True
    >>> check_alerts([a, {**a, "score": 0.8}], {"alert-E1"}, {"alert-E1"}).detail
    '1 alerts (baseline 1), 2 messages; 0 encounters with several ids, 1 ids sent with different contents'
    >>> check_alerts([a, {**a, "alert_id": "x"}], {"alert-E1", "x"}, {"alert-E1"}).ok
    False
    """
    ids: dict[str, set[str]] = defaultdict(set)
    contents: dict[str, set[bytes]] = defaultdict(set)
    for v in sent:
        ids[v["encounter_id"]].add(v["alert_id"])
        contents[v["alert_id"]].add(orjson.dumps(v, option=orjson.OPT_SORT_KEYS))
    several = [e for e, s in ids.items() if len(s) != 1]
    unlike = [a for a, s in contents.items() if len(s) != 1]
    return Check("one alert per encounter", not several and not unlike and final_ids == base_ids,
                 f"{len(final_ids)} alerts (baseline {len(base_ids)}), {len(sent)} messages; "
                 f"{len(several)} encounters with several ids, {len(unlike)} ids sent with different contents")


def check_deliveries(delivered: Sequence[str], final_ids: set[str]) -> Check:
    """One webhook delivery (an acknowledged POST) per final alert id, none twice, none unknown.

    >>> check_deliveries(["a1", "a2"], {"a1", "a2"}).ok
    True
    >>> check_deliveries(["a1", "a1"], {"a1", "a2"}).detail
    '2 deliveries for 2 alerts; 1 delivered twice or more, 1 never, 0 not an alert'
    """
    counts = Counter(delivered)
    twice = [a for a, n in counts.items() if n > 1]
    never, unknown = final_ids - set(counts), set(counts) - final_ids
    return Check("one webhook delivery per alert", not twice and not never and not unknown,
                 f"{len(delivered)} deliveries for {len(final_ids)} alerts; {len(twice)} delivered twice "
                 f"or more, {len(never)} never, {len(unknown)} not an alert")


def check_accounting(adt_ends: dict[int, int], accepted: Sequence[tuple[int, int]],
                     dead: set[tuple[int, int]]) -> Check:
    """produced = processed + DLQ: every ADT (partition, offset) applied (``hospital.adt-accepted``
    names it by its source coordinates) or dead-lettered, never both, nothing else.

    >>> check_accounting({0: 3, 1: 1}, [(0, 0), (0, 2), (0, 2), (1, 0)], {(0, 1)}).detail
    '4 produced = 3 applied + 1 dead letters; 0 neither, 0 both, 1 accepted twice'
    >>> check_accounting({0: 3}, [(0, 0), (0, 1)], {(0, 1)}).ok
    False
    """
    applied = set(accepted)
    produced = {(p, o) for p, end in adt_ends.items() for o in range(end)}
    ok = applied | dead == produced and not applied & dead
    return Check("produced = processed + DLQ", ok,
                 f"{len(produced)} produced = {len(applied)} applied + {len(dead)} dead letters; "
                 f"{len(produced - applied - dead)} neither, {len(applied & dead)} both, "
                 f"{len(accepted) - len(applied)} accepted twice")


def check_oracle(valid: Sequence[dict], out: Outputs, capacity: dict[str, int]) -> list[Check]:
    """KPI windows and labels against tests/stream_oracle.py, as test_stream_e2e checks them
    (``valid``: the applied ADT events, each with its ``_partition``)."""
    from contracts.events import KpiValue
    from stream_oracle import Oracle, close

    oracle = Oracle(list(valid), out.scores, capacity)
    got = {(v.kpi, v.dimension, v.dimension_id, v.window, v.window_start.date()): v
           for v in (KpiValue.model_validate(m) for m in out.kpis.values())}
    want = oracle.expected(got)
    bad = [k for k, (value, num, den) in want.items()
           if not (close(got[k].value, value) and close(got[k].numerator, num) and close(got[k].denominator, den))]
    wrong = [e for e, lab in oracle.labels.items()
             if e not in out.labels or out.labels[e]["readmitted"] != lab["readmitted"]]
    extra = set(out.labels) - set(oracle.labels)
    return [Check("KPI windows = oracle", bool(want) and not bad, f"{len(want)} windows, {len(bad)} differ {bad[:3]}"),
            Check("labels = oracle", not wrong and not extra,
                  f"{len(oracle.labels)} labels, {len(wrong)} missing or different, {len(extra)} extra")]


def check_finals(base: Outputs, out: Outputs) -> Check:
    problems = diff_finals(base, out)
    return Check("final outputs = undisturbed run", not problems,
                 "; ".join(problems) or f"scores, labels, alerts, KPI windows, DLQ equal; messages "
                                        f"{out.messages} (baseline {base.messages})")


def check_database(base_dump: dict[str, list[tuple]], dump: dict[str, list[tuple]]) -> Check:
    problems = diff_dumps(base_dump, dump)
    return Check("live sink database = baseline's", not problems,
                 "; ".join(problems) or f"{len(dump)} tables, {sum(map(len, dump.values()))} rows equal")
