"""Replay speed: one simulated year of a 10-hospital system re-processed from offset 0.

1. ``simulate --facilities 10`` for 365 days into a source namespace's ``hospital.adt``;
2. ``wardstream replay`` into a fresh namespace (``consumers.replay.plan_replay`` +
   ``copy_into_namespace``: same keys, same partitions, byte for byte), timed;
3. a ``wardstream worker`` started in that namespace (fresh group, empty state) re-processes the
   copy from offset 0. The worker is slow next to the year's size on this 2-core machine, so it
   runs for a fixed budget (````budget``: 30 s quick, 90 s full``); its rate is measured on its committed offsets
   between its first commit and the end of the budget, and the time for the whole year is
   EXTRAPOLATED from that rate (plus the measured start-up). The figures say which is which.
"""

from __future__ import annotations

import json
import sys
import time

from bench.bench_e2e import RESULTS, RssSampler, mib, namespace, produce_simulation
from producers.simulator import SimConfig


def run(quick: bool = False) -> dict:
    from consumers.replay import copy_into_namespace, plan_replay
    from stream.runner import StreamWorker

    days = 30 if quick else 365
    budget = 30.0 if quick else 90.0
    cfg = SimConfig(seed=42, days=days, facilities=10)
    logs = RESULTS / "logs" / "replay"
    logs.mkdir(parents=True, exist_ok=True)
    out: dict[str, object] = {"sim_days": days, "sim_facilities": cfg.facilities, "sim_beds_each": cfg.beds}
    with namespace("brsrc") as src:
        produced = produce_simulation(cfg)
        out.update(events=produced.events, patients=produced.patients,
                   simulate_to_kafka_s=round(produced.seconds, 1),
                   simulate_to_kafka_events_per_s=round(produced.events / produced.seconds))
        with namespace("brdst") as dst:
            t0 = time.perf_counter()
            plan = plan_replay(src)
            copied = copy_into_namespace(plan, dst)
            copy_s = time.perf_counter() - t0
            out.update(replay_copy_s=round(copy_s, 1),
                       replay_copy_events_per_s=round(produced.events / copy_s),
                       replay_copied_events=copied.events)
            with StreamWorker(log_path=logs / "worker.log", loglevel="warning") as w:
                rss = RssSampler(w.proc.pid)
                rss.start()
                started = time.perf_counter()
                first: tuple[float, int] | None = None
                last: tuple[float, int] = (started, 0)
                while time.perf_counter() - started < budget or first is None:
                    if not w.alive():
                        raise RuntimeError(f"worker died; see {logs / 'worker.log'}")
                    p = w.progress()
                    now, done = time.perf_counter(), p["adt_end"] - p["adt_lag"]
                    if done > 0 and first is None:
                        first = (now, done)
                    last = (now, done)
                    if p["adt_lag"] == 0:
                        break
                    if time.perf_counter() - started > 600:
                        raise TimeoutError("worker committed nothing in 600 s")
                    time.sleep(1)
                rss.stop()
    startup = first[0] - started
    span = max(1e-9, last[0] - first[0])
    rate = (last[1] - first[1]) / span if last[1] > first[1] else last[1] / (last[0] - started)
    processed = last[1]
    whole = processed >= produced.events
    out.update(
        worker_budget_s=budget,
        worker_startup_to_first_commit_s=round(startup, 1),
        worker_events_processed=processed,
        worker_events_per_s=round(rate),
        worker_whole_year_measured=whole,
        worker_year_s=round(last[0] - started, 1) if whole else round(startup + produced.events / rate),
        worker_year_s_is="measured" if whole else "extrapolated from the measured rate",
        worker_peak_rss_mib=mib(rss.peak),
    )
    out["replay_total_s"] = round(copy_s + float(out["worker_year_s"]), 1)
    return out


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
