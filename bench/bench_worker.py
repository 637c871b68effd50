"""The stream worker alone: how fast it drains a backlog of ``hospital.adt``, per setting.

No sink and no database: this isolates the worker from the rest of the pipeline (``bench_e2e``
has the whole of it). For each variant (extra worker environment) in turn, one simulated period
(the same seed) is produced into a fresh namespace; then a worker with fresh state starts on it,
and the clock runs until its group has committed every ``hospital.adt`` offset (``adt``)
and every ``hospital.kpi-partials`` record (the KPI combiner commits a partial once a flush of
its windows is out: ``kpis``). Rates are events per second after the first commit, so Faust's
start-up is left out (the worker commits every 0.5 s here, ``BROKER_COMMIT_INTERVAL``, for a
finer clock). The variants share one run, so their ratios hold even on this noisy machine; the
variant order alternates over two rounds to spread the drift.

Beside it, in each round, on the first variant's topic before its worker starts: a Faust agent
that only decodes each message (``bench.floors.faust_noop``, events/s after its first message),
the most any agent on Faust's stream path reaches here; ``<variant>_adt_pct_of_faust_noop`` is
the worker's ADT side against the better of the two rounds of it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from bench.bench_e2e import RESULTS, RssSampler, mib, namespace, produce_simulation
from bench.floors import faust_noop
from producers.simulator import SimConfig
from contracts.events import Topics

# (label, extra worker env): the defaults, then settings the profile points at
VARIANTS: list[tuple[str, dict[str, str]]] = [
    ("default", {}),
    ("flush_yield0", {"WARDSTREAM_FLUSH_YIELD_S": "0"}),  # the KPI flush never sleeps
    ("linger0", {"WARDSTREAM_PRODUCER_LINGER": "0"}),
    ("batch2000", {"WARDSTREAM_ADT_BATCH": "2000", "WARDSTREAM_ADT_BATCH_WITHIN": "0.2"}),
    ("flush10s", {"KPI_FLUSH_SECONDS": "10"}),
]


def drain(produced_events: int, logs: Path, label: str, env: dict[str, str], timeout: float = 600,
          cwd: Path | str | None = None, cmd: Sequence[str] | None = None) -> dict:
    """One worker on the current namespace until caught up; rates after its first commit.

    ``cwd`` / ``cmd``: start the worker from another checkout (``python -m stream.cli`` run in
    ``cwd`` imports that checkout's code) and / or with another command line (an older
    ``stream.cli`` has no ``--log-file``). Also reported: the model-health monitor's partials
    applied (``with_health``), for a worker that has one (else the same as ``with_kpis``).
    """
    from stream.runner import StreamWorker

    class Worker(StreamWorker):
        def start(self) -> "Worker":
            if cwd is None and cmd is None:
                return super().start()
            log = open(self.log_path, "ab")
            self._logs.append(log)  # closed by stop()
            argv = list(cmd or [sys.executable, "-m", "stream.cli", "-l", self.loglevel, "--log-file", "-"])
            self.proc = subprocess.Popen(argv, env=self.env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
            return self

    t0 = time.perf_counter()
    first = adt_done = kpis_done = health_done = None
    env = {"BROKER_COMMIT_INTERVAL": "0.5", **env}
    with Worker(env=env, log_path=logs / f"{label}.log", loglevel="warning") as w:
        rss = RssSampler(w.proc.pid)
        rss.start()
        deadline = time.monotonic() + timeout
        while True:
            p = w.progress()
            now = time.perf_counter() - t0
            if first is None and p["adt_lag"] < p["adt_end"]:
                first = now
            if adt_done is None and p["adt_lag"] == 0:
                adt_done = now
            if adt_done is not None and kpis_done is None and w.kpis_caught_up(p):
                kpis_done = now
            if adt_done is not None and health_done is None and p.get("health_partitions_behind", 0) == 0:
                health_done = now
            if kpis_done is not None and health_done is not None:
                break
            if not w.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"worker {label} died or too slow: {p}")
            time.sleep(0.25)
        rss.stop()
    start = first or 0
    return {
        "first_commit_s": round(start, 1),
        "adt_events_per_s": round(produced_events / max(1e-9, adt_done - start)),
        "with_kpis_events_per_s": round(produced_events / max(1e-9, kpis_done - start)),
        "with_health_events_per_s": round(produced_events / max(1e-9, max(kpis_done, health_done) - start)),
        "peak_rss_mib": mib(rss.peak),
    }


def run(quick: bool = False, variants: list[str] | None = None) -> dict:
    days = 30 if quick else 180
    logs = RESULTS / "logs" / "worker"
    logs.mkdir(parents=True, exist_ok=True)
    chosen = [(k, e) for k, e in VARIANTS if not variants or k in variants]
    out: dict[str, object] = {"sim_days": days}
    rounds: dict[str, list[dict]] = {}
    noop: list[float] = []
    for r, order in enumerate((chosen, chosen[::-1])):
        for i, (key, env) in enumerate(order):
            with namespace(f"bwork{key}") as ns:
                produced = produce_simulation(SimConfig(seed=7, days=days))
                out["events"] = produced.events
                if i == 0:
                    floor = faust_noop(Topics(ns).adt, produced.events)
                    noop.append(produced.events / floor["after_first_s"])
                rounds.setdefault(key, []).append(drain(produced.events, logs, f"{key}-r{r}", env))
    out["faust_noop_events_per_s"] = round(max(noop))
    for key, results in rounds.items():  # the better of the two rounds (the machine is shared)
        best = max(results, key=lambda d: d["adt_events_per_s"])
        out.update({f"{key}_{k}": v for k, v in best.items()})
        out[f"{key}_adt_pct_of_faust_noop"] = round(100 * best["adt_events_per_s"] / max(noop), 1)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.bench_worker", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    names = [k for k, _ in VARIANTS]
    parser.add_argument("variants", nargs="*", help=f"variants to run, of {', '.join(names)} (default: all)")
    parser.add_argument("--quick", action="store_true", help="30 simulated days instead of 180")
    args = parser.parse_args()
    if unknown := set(args.variants) - set(names):
        parser.error(f"unknown variant(s) {', '.join(sorted(unknown))}; choose from {', '.join(names)}")
    print(json.dumps(run(quick=args.quick, variants=args.variants), indent=2))
