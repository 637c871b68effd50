"""Drive a :class:`~producers.simulator.Simulation` into a sink: pacing, progress, Ctrl-C, summary.

The sink is any ``emit(item: Emitted) -> None``; the Kafka sink and the file sink both use
:func:`drive`. SIGINT (Ctrl-C) only sets a stop flag: the loop ends after the current event, and
the caller flushes what was sent, so nothing half-written is left behind.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import orjson
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from producers.clock import SimClock
from producers.simulator import Emitted, Simulation
from contracts.events import TruthRecord, dump

UPDATE_EVERY = 1024  # events between progress / stop checks


@dataclass
class Summary:
    """What a run produced; ``interrupted`` when Ctrl-C (or ``stop``) ended it early."""

    events: int = 0
    by_type: dict[str, int] = field(default_factory=dict)
    first_event_at: str | None = None
    last_event_at: str | None = None
    period_start: str = ""
    period_end: str = ""
    wall_seconds: float = 0.0
    bytes: int = 0
    interrupted: bool = False
    destination: str = ""

    @property
    def events_per_second(self) -> float:
        return self.events / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def table_rows(self) -> list[tuple[str, str]]:
        rows = [("destination", self.destination), ("events", f"{self.events:,}")]
        rows += [(f"  {k}", f"{v:,}") for k, v in sorted(self.by_type.items())]
        rows += [("simulated period", f"{self.period_start} .. {self.period_end}"),
                 ("events from .. to", f"{self.first_event_at} .. {self.last_event_at}"),
                 ("wall time", f"{self.wall_seconds:.2f} s"),
                 ("events/s", f"{self.events_per_second:,.0f}"),
                 ("MB", f"{self.bytes / 1e6:.1f}"),
                 ("interrupted", "yes" if self.interrupted else "no")]
        return rows


@contextmanager
def sigint_flag() -> Iterator[threading.Event]:
    """A flag set by Ctrl-C instead of KeyboardInterrupt (only in the main thread)."""
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = signal.signal(signal.SIGINT, lambda *_: flag.set())
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def drive(sim: Simulation, emit: Callable[[Emitted], int], *, speed: float = 0.0,
          progress: bool = True, stop: Callable[[], bool] | None = None,
          console: Console | None = None, destination: str = "",
          live_from: float | None = None, watch: Callable[[float], object] | None = None) -> Summary:
    """Feed every event of ``sim`` to ``emit`` (which returns the bytes written) in event order.

    ``speed`` paces event time against wall time; with ``live_from`` (epoch seconds) only the
    events from then on are paced (:class:`SimClock`). ``watch`` gets the simulated time (epoch
    seconds) of the events sent, every ``UPDATE_EVERY`` events and at each paced one.
    """
    cfg = sim.config
    clock = SimClock(speed, cfg.start_epoch, live_from=live_from)
    summary = Summary(period_start=_iso(cfg.start_epoch), period_end=_iso(cfg.end_epoch),
                      destination=destination)
    with sigint_flag() as flag:
        stopped = (lambda: flag.is_set() or stop()) if stop else flag.is_set
        bar = Progress(TextColumn("[bold]simulating"), BarColumn(),
                       TextColumn("{task.fields[sim]}"), TextColumn("{task.fields[n]:>10,} events"),
                       TextColumn("{task.fields[rate]:>8,.0f} ev/s"), TimeElapsedColumn(),
                       console=console, disable=not progress, transient=False)
        span = cfg.end_epoch - cfg.start_epoch
        started = time.perf_counter()
        n = size = 0
        first = last = None
        with bar:
            task = bar.add_task("sim", total=span, sim="", n=0, rate=0.0)
            for item in sim.stream():
                if speed and clock.delay(item.t) > 0:
                    if watch:
                        watch(item.t)
                    clock.wait_until(item.t, stopped)
                if stopped():
                    summary.interrupted = True
                    sim.withdraw(item)  # generated but never sent: not in counts nor truth
                    break
                size += emit(item)
                n += 1
                if first is None:
                    first = item.t
                last = item.t
                if n % UPDATE_EVERY == 0:
                    if watch:
                        watch(item.t)
                    if stopped():
                        summary.interrupted = True
                        break
                    el = time.perf_counter() - started
                    bar.update(task, completed=item.t - cfg.start_epoch, sim=_iso(item.t), n=n,
                               rate=n / el if el else 0.0)
            el = time.perf_counter() - started
            bar.update(task, completed=(last - cfg.start_epoch) if last and summary.interrupted else span,
                       sim=_iso(last) if last else "", n=n, rate=n / el if el else 0.0)
        summary.wall_seconds = time.perf_counter() - started
    summary.events, summary.bytes = n, size
    summary.by_type = dict(sim.counts)
    summary.first_event_at = _iso(first) if first is not None else None
    summary.last_event_at = _iso(last) if last is not None else None
    return summary


def write_truth(sim: Simulation, path: Path) -> int:
    """The truth file: one validated TruthRecord per emitted discharge (JSON lines)."""
    records = sim.truth_records()
    with path.open("wb") as f:
        for rec in records:
            f.write(dump(TruthRecord(**rec)) + b"\n")
    return len(records)


def simulate_to_file(sim: Simulation, path: Path, **kwargs: object) -> Summary:
    """Write the events as JSON lines (orjson, contract field order) to ``path``."""
    with path.open("wb") as f:
        write = f.write

        def emit(item: Emitted) -> int:
            line = orjson.dumps(item.event, option=orjson.OPT_APPEND_NEWLINE)
            write(line)
            return len(line)

        return drive(sim, emit, destination=str(path), **kwargs)  # type: ignore[arg-type]
