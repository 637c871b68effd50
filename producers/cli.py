"""``wardstream simulate``: the seeded hospital simulator, into Kafka or a JSON-lines file."""

from __future__ import annotations

from datetime import date, timedelta
from enum import Enum
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from producers import drift
from producers.hospital import MIN_BEDS
from producers.runner import Summary, simulate_to_file, write_truth
from producers.simulator import SimConfig, Simulation


ShiftKind = Enum("ShiftKind", {k.replace("-", "_"): k for k in drift.KINDS}, type=str)  # type: ignore[misc]
"""The --shift choices (producers.drift.KINDS)."""
Client = Enum("Client", {k.replace("-", "_"): k for k in ("auto", "confluent", "kafka-python")},  # type: ignore[misc]
              type=str)
"""The --client choices (producers.kafka_sink.CLIENTS)."""
Format = Enum("Format", {"json": "json", "hl7": "hl7"}, type=str)  # type: ignore[misc]
"""The --format choices: contract v1 JSON events, or the HL7 v2 feed (producers.hl7_out)."""


def _date(value: str, flag: str = "--start") -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a date like 2025-01-01", param_hint=flag) from None


def _writable(path: Path | None, flag: str) -> Path | None:
    if path is None:
        return None
    parent = path.resolve().parent
    if path.is_dir():
        raise typer.BadParameter(f"{path} is a directory", param_hint=flag)
    if not parent.is_dir():
        raise typer.BadParameter(f"folder {parent} does not exist", param_hint=flag)
    existed = path.exists()
    try:  # the real test (root passes every os.access check)
        with path.open("ab"):
            pass
    except OSError as exc:
        raise typer.BadParameter(f"{path} is not writable ({exc.strerror})", param_hint=flag) from None
    if not existed:
        path.unlink()
    return path


def print_summary(summary: Summary, console: Console, truth: tuple[Path, int] | None = None) -> None:
    table = Table(title="simulation summary", show_header=False)
    for k, v in summary.table_rows():
        table.add_row(k, v)
    if truth:
        table.add_row("truth file", f"{truth[0]} ({truth[1]:,} discharges)")
    console.print(table)


def simulate(
    seed: int = typer.Option(42, help="Random seed: same seed and options give byte-identical events."),
    start: str = typer.Option("2025-01-01", help="First simulated day (UTC), YYYY-MM-DD."),
    days: int = typer.Option(7, help="Simulated days; nothing at or after start + days is emitted."),
    beds: int = typer.Option(300, help=f"Beds per facility (at least {MIN_BEDS})."),
    facilities: int = typer.Option(1, help="Number of hospitals (F01, F02, ...)."),
    speed: float = typer.Option(0.0, help="Simulated seconds per wall second; 0 = as fast as possible."),
    out: Path | None = typer.Option(None, "--out", help="Write events to this file instead of Kafka "
                                    "(JSON lines; with --format hl7, HL7 messages: a segment per line, "
                                    "a blank line after each message)."),
    fmt: Format | None = typer.Option(
        None, "--format", help="json (contract v1 events, the default) or hl7 (HL7 v2.5 ADT: each event "
        "as its A01 / A02 / A03, plus A08 updates, A11-A13 cancellations, A07 changes to "
        "outpatient and A40 merges, which "
        "wardstream mllp maps to contract v1.1 events; needs --out or --mllp)."),
    mllp: str | None = typer.Option(
        None, "--mllp", help="Send the HL7 feed to this MLLP listener (HOST:PORT, e.g. 127.0.0.1:2575), "
        "each message after the previous one's ACK; AE is retried with backoff, an AR stops the "
        "run. Implies --format hl7."),
    mllp_timeout: float = typer.Option(30.0, "--mllp-timeout", help="Seconds to wait for each ACK "
                                       "before sending the message again."),
    mllp_retries: int = typer.Option(8, "--mllp-retries", help="Re-sends of one message (after AE, a "
                                     "timeout or a lost connection) before giving up."),
    truth_out: Path | None = typer.Option(None, "--truth-out",
                                          help="Write the truth (p_readmit, readmitted per discharge) here."),
    shift_at: str | None = typer.Option(
        None, "--shift-at", help="Drift scenario: from this day (YYYY-MM-DD, inside the period) on, "
        "the case mix and/or the coding change (see --shift). Without it, no drift."),
    shift: ShiftKind | None = typer.Option(
        None, help="The drift from --shift-at on: case-mix (older, sicker patients, more emergency "
        "admissions), coding (complications and metastases coded, Charlson rises; true risk unchanged) "
        "or both (the default)."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar."),
    client: Client = typer.Option("auto", help="Kafka client: auto (confluent-kafka when installed), "
                                  "confluent or kafka-python."),
) -> None:
    """Simulate hospital ADT events (admissions, transfers, discharges) for a period.

    Events go to the hospital.adt topic (keyed by patient_id, after the reference data on
    hospital.reference) or, with --out, to a file. Ctrl-C stops cleanly after flushing.
    """
    if days <= 0:
        raise typer.BadParameter("must be at least 1", param_hint="--days")
    if speed < 0:
        raise typer.BadParameter("must be >= 0 (0 = as fast as possible)", param_hint="--speed")
    if beds < MIN_BEDS:
        raise typer.BadParameter(f"must be at least {MIN_BEDS} (4 per department, 8 departments, x2)",
                                 param_hint="--beds")
    first = _date(start)
    shift_day = _date(shift_at, "--shift-at") if shift_at else None
    if shift is not None and shift_day is None:
        raise typer.BadParameter("needs --shift-at DATE", param_hint="--shift")
    last = first + timedelta(days=days - 1)
    if shift_day is not None and not first <= shift_day <= last:
        raise typer.BadParameter(f"{shift_day} not in {first} .. {last}", param_hint="--shift-at")
    config = SimConfig(seed=seed, start=first, days=days, beds=beds, facilities=facilities,
                       shift_at=shift_day, shift=shift.value if shift else "both")
    try:
        config.validate()
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    _writable(out, "--out")
    _writable(truth_out, "--truth-out")
    console = Console(stderr=True)
    if mllp is not None or fmt == Format.hl7:
        _simulate_hl7(config, out, mllp, truth_out, console, speed=speed, progress=not no_progress,
                      timeout=mllp_timeout, retries=mllp_retries, fmt=fmt)
        return
    if out is not None:
        sim = Simulation(config)
        summary = simulate_to_file(sim, out, speed=speed, progress=not no_progress, console=console)
        n_truth = write_truth(sim, truth_out) if truth_out else 0
    else:
        from producers.kafka_sink import simulate_to_kafka  # kafka client only when needed

        summary = simulate_to_kafka(config, speed=speed, progress=not no_progress,
                                    truth_out=truth_out, console=console, client=client.value)
        n_truth = summary.by_type.get("discharge", 0)
    print_summary(summary, console, (truth_out, n_truth) if truth_out else None)
    if summary.interrupted:
        raise typer.Exit(130)


def _simulate_hl7(config: SimConfig, out: Path | None, mllp: str | None, truth_out: Path | None,
                  console: Console, *, speed: float, progress: bool, timeout: float, retries: int,
                  fmt: "Format | None") -> None:
    """``--format hl7``: the feed into ``out`` or to the MLLP listener ``mllp`` (producers.hl7_out)."""
    from producers import hl7_out
    from producers.mllp.client import MllpError

    if fmt == Format.json:
        raise typer.BadParameter("--mllp sends HL7: use --format hl7 (or leave --format out)",
                                 param_hint="--format")
    if (out is None) == (mllp is None):
        raise typer.BadParameter("give one destination: --out FILE or --mllp HOST:PORT",
                                 param_hint="--format")
    if timeout <= 0 or retries < 0:
        raise typer.BadParameter("--mllp-timeout must be > 0 and --mllp-retries >= 0", param_hint="--mllp")
    sim = Simulation(config)
    acks = hl7_out.AckCounts()
    try:
        if out is not None:
            summary = hl7_out.hl7_to_file(sim, out, speed=speed, progress=progress, console=console)
        else:
            try:
                host, port = hl7_out.parse_address(mllp or "")
            except ValueError as exc:
                raise typer.BadParameter(str(exc), param_hint="--mllp") from None
            summary = hl7_out.hl7_to_mllp(sim, host, port, timeout=timeout, retries=retries, acks=acks,
                                          speed=speed, progress=progress, console=console)
    except (hl7_out.Rejected, MllpError, OSError) as exc:
        if acks.by_trigger:
            console.print(acks.table())
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(1) from None
    n_truth = write_truth(sim, truth_out) if truth_out else 0
    print_summary(summary, console, (truth_out, n_truth) if truth_out else None)
    if acks.by_trigger:
        console.print(acks.table())
    if summary.interrupted:
        raise typer.Exit(130)


def register(app: typer.Typer) -> None:
    app.command("simulate")(simulate)
