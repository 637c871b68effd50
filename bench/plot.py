"""Plot the end-to-end bench figures: ``python -m bench.plot`` -> ``bench/results/e2e.png``.

Reads ``bench/results/{e2e,latency,replay,memory}.json`` (written by ``python -m bench``); panels
whose JSON is missing are left out. Matplotlib's Agg backend: no display needed.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def _load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


PALETTE = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3"]


def _bars(ax, labels: list[str], values: list[float], title: str, ylabel: str, log: bool = False,
          fmt: str = "{:,.0f}") -> None:
    bars = ax.bar(labels, values, color=[PALETTE[i % len(PALETTE)] for i in range(len(values))])
    for b, v in zip(bars, values):
        ax.annotate(fmt.format(v), (b.get_x() + b.get_width() / 2, b.get_height()),
                    ha="center", va="bottom", fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
    ax.tick_params(axis="x", labelsize=8)


def _throughput(ax, e2e: dict) -> None:
    labels, values = ["bare consumer\n(ceiling)"], [e2e["ceiling_events_per_s"]]
    for key, label in (("aiokafka_events_per_s", "bare\naiokafka"), ("faust_noop_events_per_s", "Faust agent\ndoing nothing")):
        if key in e2e:  # the layers under the worker (bench/floors.py)
            labels.append(label)
            values.append(e2e[key])
    for key in sorted(k.removeprefix("pipeline_").removesuffix("_events_per_s") for k in e2e
                      if k.startswith("pipeline_") and k.endswith("w_events_per_s")
                      or k.startswith("pipeline_") and k.endswith("_events_per_s")
                      and "after_first" not in k):
        labels.append("pipeline\n" + key.replace("_", "\n", 1))
        values.append(e2e[f"pipeline_{key}_events_per_s"])
    _bars(ax, labels, values, f"End-to-end throughput ({e2e['events']:,} events)", "events/s (log)", log=True)


def _latency(ax, lat: dict) -> None:
    """Webhook latency against the rate, one line per configuration and percentile."""
    series: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for key, value in lat.items():  # {config}_r{rate}_alert_webhook_p{50,99}_ms
        m = re.fullmatch(r"(.+)_r(\d+)_alert_webhook_(p50|p99)_ms", key)
        if m and value is not None:
            series.setdefault((m.group(1), m.group(3)), []).append((int(m.group(2)), value))
    for (config, q), points in series.items():
        points.sort()
        ax.plot([r for r, _ in points], [v for _, v in points], marker="o", markersize=3,
                linestyle="-" if q == "p99" else ":", label=f"{config} {q}")
    ax.axhline(250, color="red", linestyle="--", linewidth=1, label="p99 target 250 ms")
    ax.set_yscale("log")
    ax.set_xlabel("events/s (steady)")
    ax.set_ylabel("ms (log)")
    ax.set_title("Discharge -> alert webhook latency", fontsize=10)
    ax.legend(fontsize=7)


def _replay(ax, rep: dict) -> None:
    runs = [n for n in (1, 2) if f"replay_{n}w_s" in rep]  # measured whole, into PostgreSQL
    _bars(ax, ["simulate\n-> Kafka", "replay copy", *(f"{n} worker{'s' * (n > 1)}\n+ sink" for n in runs)],
          [rep["simulate_to_kafka_s"], rep["replay_copy_s"], *(rep[f"replay_{n}w_s"] for n in runs)],
          f"Replay of {rep['sim_days']} days x {rep['sim_facilities']} hospitals ({rep['events']:,} events)",
          "seconds (log)", log=True)


def _memory(ax, mem: dict) -> None:
    labels = [f"{mem['y1_years']} y\n{mem['y1_patients']:,} patients\n{mem['y1_events']:,} events",
              f"{mem['y10_years']} y\n{mem['y10_patients']:,} patients\n{mem['y10_events']:,} events"]
    _bars(ax, labels, [mem["y1_peak_rss_mib"], mem["y10_peak_rss_mib"]],
          f"Worker peak RSS ({mem['beds']} beds)", "MiB", fmt="{:,.0f} MiB")


def main() -> Path:
    panels = [(name, fn, _load(name)) for name, fn in
              (("e2e", _throughput), ("latency", _latency), ("replay", _replay), ("memory", _memory))]
    panels = [(n, fn, d) for n, fn, d in panels if d]
    if not panels:
        sys.exit(f"no results in {RESULTS}: run `python -m bench e2e latency replay memory` first")
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.4), squeeze=False)
    for ax, (_, fn, data) in zip(axes[0], panels):
        fn(ax, data)
    machine = next((d.get("_machine") for _, _, d in panels if d.get("_machine")), "")
    fig.suptitle(f"wardstream end-to-end benchmarks ({machine})", fontsize=11)
    fig.tight_layout()
    out = RESULTS / "e2e.png"
    fig.savefig(out, dpi=110)
    print(out)
    return out


if __name__ == "__main__":
    main()
