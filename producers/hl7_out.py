"""``wardstream simulate --format hl7``: a simulation's HL7 feed into a file or to an MLLP listener.

Both drive the simulation with :func:`producers.runner.drive` (pacing, progress bar, Ctrl-C) and
send, per simulated event, the feed's messages due by then (:class:`producers.hl7_feed.Hl7Feed`).

- **File** (``--out``): one segment per line, a blank line after each message
  (:func:`producers.hl7_feed.file_bytes`): HAPI's and most engines' file readers take it, and
  ``tests/hapi``'s sender sends it as it is.
- **MLLP** (``--mllp HOST:PORT``): one connection, each message after the previous one's ACK
  (:class:`producers.mllp.client.MllpClient`: AE, a timeout or a lost connection -> the same
  message again with backoff). An AR stops the run with :class:`Rejected`: ``wardstream mllp``
  maps every trigger of the feed (A01-A03, A07, A08, A11-A13, A40; contract v1.1).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.table import Table

from producers.hl7_feed import MAPPED, Hl7Feed, Hl7Message, file_bytes
from producers.mllp.client import MllpClient
from producers.runner import Summary, drive
from producers.simulator import Emitted, Simulation


class Rejected(RuntimeError):
    """The listener refused (AR) a message of the feed: the message says which and why."""


@dataclass
class AckCounts:
    """ACK codes by trigger, and how many messages were sent again."""

    by_trigger: Counter[tuple[str, str]] = field(default_factory=Counter)
    resends: int = 0

    def table(self) -> Table:
        t = Table(title="MLLP acknowledgements")
        t.add_column("trigger")
        codes = sorted({"AA", "AR"} | {c for _, c in self.by_trigger})  # AA and AR always shown
        for c in codes:
            t.add_column(c, justify="right")
        for trigger in sorted({tr for tr, _ in self.by_trigger}):
            t.add_row(trigger, *(f"{self.by_trigger[(trigger, c)]:,}" for c in codes))
        t.caption = f"re-sent after AE / timeout: {self.resends:,}"
        return t


def _run(sim: Simulation, send: Any, destination: str, **kwargs: Any) -> Summary:
    """Drive ``sim``, handing each message to ``send(msg) -> bytes``; the summary counts messages."""
    feed = Hl7Feed(sim)

    def emit(item: Emitted) -> int:
        return sum(send(m) for m in feed.for_event(item))

    summary = drive(sim, emit, destination=destination, **kwargs)
    if not summary.interrupted:
        summary.bytes += sum(send(m) for m in feed.finish())
    summary.by_type = dict(sorted(feed.counts.items()))
    summary.events = sum(feed.counts.values())
    return summary


def hl7_to_file(sim: Simulation, path: Path, **kwargs: Any) -> Summary:
    """Write ``sim``'s HL7 feed to ``path`` (see the module doc for the format)."""
    with path.open("wb") as f:
        def send(m: Hl7Message) -> int:
            data = file_bytes(m)
            f.write(data)
            return len(data)

        return _run(sim, send, str(path), **kwargs)


def parse_address(value: str) -> tuple[str, int]:
    """``HOST:PORT`` -> (host, port); ValueError with a readable message.

    >>> parse_address("127.0.0.1:2575"), parse_address("[::1]:2575")
    (('127.0.0.1', 2575), ('::1', 2575))
    """
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{value!r} is not HOST:PORT (e.g. 127.0.0.1:2575)")
    return host.strip("[]"), int(port)


def hl7_to_mllp(sim: Simulation, host: str, port: int, *, timeout: float = 30.0, retries: int = 8,
                acks: AckCounts | None = None, **kwargs: Any) -> Summary:
    """Send ``sim``'s HL7 feed to the MLLP listener at ``host:port`` (see the module doc).

    Raises OSError when the listener cannot be reached at the start, :class:`Rejected` on an AR
    for a trigger the listener maps (:data:`~producers.hl7_feed.MAPPED`: all the feed sends),
    :class:`producers.mllp.client.MllpError` when retries run out.
    ``acks`` (filled as the run goes) has the ACK codes by trigger.
    """
    acks = acks if acks is not None else AckCounts()
    with MllpClient(host, port, timeout=timeout, retries=retries) as client:
        client.exchange_ready()

        def send(m: Hl7Message) -> int:
            ack = client.deliver(m.text.encode(), m.control_id)
            acks.by_trigger[(m.trigger, ack.code)] += 1
            acks.resends = client.resends
            if ack.code in ("AR", "CR") and m.trigger in MAPPED:
                raise Rejected(f"the listener refused (AR) the {m.trigger} with MSH-10 {m.control_id}: "
                               f"{ack.text or 'no reason given'}")
            return len(m.text)

        return _run(sim, send, f"mllp://{host}:{port}", **kwargs)
