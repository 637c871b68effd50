"""Run the benchmarks, print one table, write ``bench/results/<name>.json``.

Each ``bench/bench_<name>.py`` exposes ``run(quick: bool = False) -> dict`` returning flat figures
(numbers or short strings). Ratios are measured within one run: the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("names", nargs="*", help="benchmarks to run (default: all), e.g. simulator sink")
    parser.add_argument("--quick", action="store_true", help="smaller workloads (a smoke run)")
    args = parser.parse_args()
    names = args.names or sorted(p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py"))
    out_dir = HERE / "results"
    out_dir.mkdir(exist_ok=True)
    console = Console()
    machine = f"{platform.machine()} {platform.processor() or ''} Python {platform.python_version()}"
    for name in names:
        module = importlib.import_module(f"bench.bench_{name}")
        started = time.perf_counter()
        figures = module.run(quick=args.quick)
        figures["_wall_seconds"] = round(time.perf_counter() - started, 1)
        figures["_machine"] = machine
        (out_dir / f"{name}.json").write_text(json.dumps(figures, indent=2, default=str))
        table = Table(title=f"bench: {name}")
        table.add_column("figure")
        table.add_column("value", justify="right")
        for key, value in figures.items():
            table.add_row(key, f"{value:,.2f}" if isinstance(value, float) else str(value))
        console.print(table)


if __name__ == "__main__":
    main()
