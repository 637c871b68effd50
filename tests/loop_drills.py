"""Run each fault drill N times in a row and print the pass counts (``make drills``).

A drill that passes once can still fail one run in ten (a rebalance lands elsewhere, a fetch
overlaps a seek). Each drill here runs ``--count N`` times in one pytest process (pytest-repeat;
the drills' undisturbed baseline is computed once per process), every run is counted whatever
the others did, and the table goes to stdout and ``bench/results/drills.json``. Not in CI: ten
runs of every drill take about two hours on this machine.

    python tests/loop_drills.py                # every drill, 10 runs each
    python tests/loop_drills.py -n 3 -k sigkill
    python tests/loop_drills.py -k cluster     # the three-broker drills (tests/test_cluster_drills.py)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# (name, pytest node id, -k expression selecting one parametrization or None)
DRILLS: list[tuple[str, str, str | None]] = [
    ("SIGKILL mid-batch, same host", "tests/test_faults.py::test_worker_sigkill_mid_stream_then_restart", "kept"),
    ("SIGKILL mid-batch, new host", "tests/test_faults.py::test_worker_sigkill_mid_stream_then_restart", "lost"),
    ("broker restart", "tests/test_faults.py::test_broker_restart_mid_stream", None),
    ("PostgreSQL restart (sink)", "tests/test_faults.py::test_postgres_restart_mid_sink", None),
    ("two workers, one leaves", "tests/test_faults.py::test_two_workers_share_partitions_and_one_leaves", None),
    ("replay of the whole topic", "tests/test_replay.py::test_whole_topic_replay_recomputes_the_live_run", None),
    ("cluster: hospital.adt leader killed", "tests/test_cluster_drills.py::test_cluster_drill", "adt-leader"),
    ("cluster: group coordinator killed", "tests/test_cluster_drills.py::test_cluster_drill", "coordinator"),
    ("cluster: worker killed, new host", "tests/test_cluster_drills.py::test_cluster_drill", "worker"),
]


def run_drill(node: str, select: str | None, runs: int, log: Path) -> tuple[int, int, float]:
    """(passed, failed, seconds) of ``runs`` runs of one drill; pytest's output goes to ``log``."""
    with tempfile.NamedTemporaryFile(suffix=".xml") as report:
        cmd = [sys.executable, "-m", "pytest", node, "--count", str(runs), "-p", "no:cacheprovider",
               "-q", f"--junitxml={report.name}", *(["-k", select] if select else [])]
        started = time.monotonic()
        with log.open("w") as out:
            subprocess.run(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, check=False)
        seconds = time.monotonic() - started
        try:
            cases = ET.parse(report.name).getroot().iter("testcase")
        except ET.ParseError:
            return 0, runs, seconds
        outcomes = [not any(child.tag in ("failure", "error") for child in case) for case in cases]
    passed = sum(outcomes)
    return passed, runs - passed, seconds


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", "--runs", type=int, default=10, help="runs of each drill (default 10)")
    ap.add_argument("-k", dest="only", help="only the drills whose name contains this text")
    args = ap.parse_args(argv)
    logs = ROOT / ".wardstream" / "logs" / "drills"
    logs.mkdir(parents=True, exist_ok=True)
    results = []
    for name, node, select in DRILLS:
        if args.only and args.only.lower() not in name.lower():
            continue
        log = logs / f"{len(results) + 1}.log"
        passed, failed, seconds = run_drill(node, select, args.runs, log)
        results.append({"drill": name, "runs": args.runs, "passed": passed, "failed": failed,
                        "seconds": round(seconds), "log": str(log.relative_to(ROOT))})
        print(f"{name:32} {passed:3d}/{args.runs} passed  {seconds:6.0f} s  ({log.relative_to(ROOT)})",
              flush=True)
    out = ROOT / "bench" / "results" / "drills.json"
    out.parent.mkdir(parents=True, exist_ok=True)  # not in a fresh clone
    out.write_text(json.dumps(results, indent=2) + "\n")
    return 0 if all(r["failed"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
