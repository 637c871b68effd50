"""Worker memory: peak RSS after one and after ten simulated years of state.

Each run: a fresh namespace, a ``wardstream worker`` started on an empty topic (its idle RSS is
the baseline), then the simulated period produced while it runs, until every ADT event is applied
(committed), plus two KPI flush periods (the KPI combiner may still lag: reported). The
peak RSS of the worker's process tree (psutil, children included, sampled every 0.25 s) is
compared with the number of patients and of events it holds state for. Both runs use the
smallest hospital the simulator allows (64 beds) so that ten years fit in the bench's time.

Target: memory grows with patients, not with events. The simulator's patients/events ratio is
nearly constant over time (new patients keep arriving), so the two are told apart through what
is kept per patient: the figures give RSS above the idle baseline per patient, the growth over
the second half of the period per patient of that half (the fixed costs, caches and buffers,
are paid by then; patients arrive at a near-constant rate, so half the events is about half the
patients), and the on-disk size of the worker's state (RocksDB tables) per patient.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from bench.bench_e2e import RESULTS, RssSampler, mib, namespace, produce_simulation
from producers.simulator import SimConfig
from stream.runner import group_id

BEDS = 64
# KPI windows are flushed every 30 s instead of 2 s: the values are the same (stream/README.md),
# and with ~18 events per simulated day the 2 s flushes re-emit thousands of windows per second.
FLUSH_S = 30.0


def _dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _wait_assigned(ns: str, worker, timeout: float = 120) -> None:
    """Until the worker's consumer group is stable with a member (the worker is up and idle)."""
    from wardstream.kafka_io import admin_client

    deadline = time.monotonic() + timeout
    with admin_client() as admin:
        while time.monotonic() < deadline:
            if not worker.alive():
                raise RuntimeError("worker died at start-up")
            try:
                desc = admin.describe_groups([group_id(ns)]).get(group_id(ns)) or {}
                if desc.get("group_state") == "Stable" and desc.get("members"):
                    return
            except Exception:  # noqa: BLE001 - the group does not exist yet
                pass
            time.sleep(1)
        raise TimeoutError("worker group never became stable")


def measure(cfg: SimConfig, logs: Path, label: str) -> dict[str, object]:
    from stream.runner import StreamWorker

    with namespace(f"bmem{label}") as ns:
        from wardstream.kafka_io import ensure_topics

        ensure_topics()
        (logs / f"worker-{label}.log").unlink(missing_ok=True)
        with StreamWorker(log_path=logs / f"worker-{label}.log", loglevel="warning",
                          flush_seconds=FLUSH_S) as w:
            rss = RssSampler(w.proc.pid)
            rss.start()
            _wait_assigned(ns, w)
            time.sleep(3)
            baseline = rss.sample()
            t0 = time.perf_counter()
            produced = produce_simulation(cfg)
            deadline = time.monotonic() + 1500
            curve: list[tuple[float, int]] = []  # (share of the events applied, RSS so far)
            while (p := w.progress())["adt_lag"] > 0:  # every ADT event applied: patient state complete
                if not w.alive() or time.monotonic() > deadline:
                    raise RuntimeError(f"worker died or too slow: {p}; see its log")
                curve.append((1 - p["adt_lag"] / max(1, produced.events), rss.peak))
                time.sleep(1)
            seconds = time.perf_counter() - t0
            time.sleep(10)  # a few more RSS samples after the last event
            rss.stop()
            final = rss.sample()
            kpi_behind = w.progress()["kpi_partitions_behind"]
        state = _dir_size(Path(os.environ["WARDSTREAM_STATE_DIR"]))
    grown = max(0, rss.peak - baseline)
    # peak RSS once half of the events were applied, for the growth over the second half
    half = next((r for share, r in curve if share >= 0.5), rss.peak)
    return {
        f"{label}_years": round(cfg.days / 365, 1),
        f"{label}_events": produced.events,
        f"{label}_patients": produced.patients,
        f"{label}_baseline_rss_mib": mib(baseline),
        f"{label}_peak_rss_mib": mib(rss.peak),
        f"{label}_final_rss_mib": mib(final),
        f"{label}_growth_mib": mib(grown),
        f"{label}_growth_kib_per_patient": round(grown / 1024 / produced.patients, 2),
        f"{label}_peak_rss_at_half_mib": mib(half),
        f"{label}_second_half_kib_per_patient": round((rss.peak - half) / 1024 / (produced.patients / 2), 2),
        f"{label}_state_on_disk_mib": mib(state),
        f"{label}_state_bytes_per_patient": round(state / produced.patients),
        f"{label}_worker_s": round(seconds, 1),
        f"{label}_worker_events_per_s": round(produced.events / seconds),
        f"{label}_kpi_partitions_still_behind": kpi_behind,
    }


def run(quick: bool = False) -> dict:
    logs = RESULTS / "logs" / "memory"
    logs.mkdir(parents=True, exist_ok=True)
    short, long = (30, 300) if quick else (365, 3650)
    out: dict[str, object] = {"beds": BEDS}
    out.update(measure(SimConfig(seed=5, days=short, beds=BEDS), logs, "y1"))
    out.update(measure(SimConfig(seed=5, days=long, beds=BEDS), logs, "y10"))
    for what in ("events", "patients", "peak_rss_mib", "growth_mib", "state_on_disk_mib"):
        a, b = float(out[f"y1_{what}"]), float(out[f"y10_{what}"])
        out[f"ratio_10y_to_1y_{what}"] = round(b / a, 2) if a else None
    return out


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
