"""``wardstream mllp``: the HL7 v2 MLLP listener (producers/mllp/server.py)."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import typer

from producers.mllp.departments import DepartmentTable
from producers.mllp.gate import KafkaGate
from producers.mllp.mapping import MapContext
from producers.mllp.server import Listener, serve, tls_context
from contracts.events import Topics
from wardstream.config import settings

log = logging.getLogger(__name__)


def mllp(
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(2575, help="TCP port (2575 is HL7's registered MLLP port)."),
    tls_cert: Path | None = typer.Option(None, "--tls-cert", help="PEM certificate chain: serve MLLP over TLS."),
    tls_key: Path | None = typer.Option(None, "--tls-key", help="PEM private key of --tls-cert."),
    departments: Path | None = typer.Option(
        None, "--departments", help="JSON object of PV1-3 point-of-care code -> department name, "
        'added to the built-in table (e.g. {"4W": "Cardiology"}).'),
    timezone: str = typer.Option("UTC", "--timezone", help="Zone of HL7 times sent without a UTC "
                                 "offset (the sending facility's, e.g. America/Chicago)."),
    ack_timeout: float = typer.Option(10.0, "--ack-timeout", help="Seconds to wait for Kafka to "
                                      "store an event before answering AE."),
) -> None:
    """Receive HL7 v2 ADT messages over MLLP and publish them as events on hospital.adt.

    Point an EHR's or interface engine's ADT feed (HL7 v2.3 to v2.8, MLLP framing) at this
    listener. A01 (admit), A02 (transfer), A03 (discharge), A04 (register), A06 / A07 (change
    patient class), A08 (update), A11 / A12 / A13 (cancel admit / transfer / discharge) and A40
    (merge) become events of contract v1.1, keyed by patient_id; the README's "HL7 v2 over
    MLLP" lists each field's HL7 source.

    Each message is acknowledged in order: AA once Kafka stored its event; AE (the sender retries)
    while Kafka is unavailable; AR, with an ERR segment, for a message that can never be mapped
    (not ADT, another trigger, a required field missing or not in a code table), which also goes
    to hospital.dlq. A re-sent message (same MSH-4 and MSH-10) is answered again, not published
    twice. Ctrl-C stops the listener after the queued events are delivered.
    """
    if (tls_cert is None) != (tls_key is None):
        raise typer.BadParameter("give both --tls-cert and --tls-key", param_hint="--tls-cert")
    if ack_timeout <= 0:
        raise typer.BadParameter("must be > 0", param_hint="--ack-timeout")
    try:
        tz = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise typer.BadParameter(f"unknown time zone {timezone!r}", param_hint="--timezone") from None
    try:
        table = DepartmentTable.from_file(departments) if departments else DepartmentTable.default()
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--departments") from None
    try:
        tls = tls_context(str(tls_cert), str(tls_key)) if tls_cert and tls_key else None
    except (OSError, ValueError) as exc:
        raise typer.BadParameter(f"cannot load the certificate: {exc}", param_hint="--tls-cert") from None
    s = settings()
    topics = Topics(s.topic_namespace)
    asyncio.run(_run(s, topics, MapContext(table, tz), host, port, tls, ack_timeout))


async def _run(s, topics: Topics, ctx: MapContext, host: str, port: int, tls, ack_timeout: float) -> None:
    gate = KafkaGate(s, [topics.adt, topics.dlq], ack_timeout)
    task = asyncio.create_task(serve(Listener(gate, topics, ctx), host, port, tls))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    try:
        await task
    except asyncio.CancelledError:
        pass
    finally:
        await asyncio.to_thread(gate.close)
        log.info("MLLP listener stopped")


def register(app: typer.Typer) -> None:
    app.command("mllp")(mllp)
