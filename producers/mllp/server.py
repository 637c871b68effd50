"""``wardstream mllp``'s listener: MLLP frames in, events to ``hospital.adt``, ACKs out.

One connection's messages are handled one at a time, in arrival order, each ACKed before the
next is read (what HL7 senders expect, and what keeps a patient's events in order: a feed
sends a patient's messages on one connection, and the producer keeps a key's order).

ACK codes (HL7 table 0008):

- **AA**: the mapped event is stored on ``hospital.adt`` (key ``patient_id``);
- **AR** + ERR: the message can never be mapped (no MSH, not ADT, a trigger the mapping does
  not know, a field the contract needs is missing or not in a code table); it is stored
  on ``hospital.dlq`` first (raw bytes, reason, ``source_topic`` ``"mllp"``);
- **AE** + ERR: Kafka did not store the event (or the dead letter): the sender retries.

A re-sent message (same MSH-4 sending facility + MSH-10 control id, seen in the last
:data:`RECENT` messages) gets its first answer again and produces nothing. Beyond that window
(or after a restart) the deterministic ``event_id`` makes a duplicate harmless: the stream
dead-letters a repeated ``event_id`` (``stream.domain.patient.check``: "duplicate event_id").

Logs carry control ids, triggers, ACK codes and reasons, never field values.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import ssl
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timezone

from producers.mllp.framing import FrameReader, frame
from producers.mllp.gate import KafkaGate, KafkaUnavailable
from producers.mllp.mapping import MapContext, Unmappable, check_routable, map_adt
from producers.mllp.message import (
    ERR_INTERNAL,
    Header,
    NotHl7,
    build_ack,
    decode,
    parse,
    read_header,
)
from contracts.events import DeadLetter, Topics, dump, raw_text

log = logging.getLogger(__name__)

RECENT = 100_000  # messages whose answer is remembered for re-sends
DLQ_SOURCE = "mllp"
NO_HEADER = Header("|", "^~\\&", "", "", "", "", "", "", "", "P", "")


@dataclass(frozen=True)
class Answer:
    """What a message was answered: the ACK code and, for AE / AR, the ERR."""

    code: str
    error: tuple[str, str] | None = None
    text: str = ""


class RecentAnswers:
    """The answers of the last ``size`` messages by (sending facility, control id)."""

    def __init__(self, size: int = RECENT) -> None:
        self._size = size
        self._seen: OrderedDict[tuple[str, str], Answer] = OrderedDict()

    def get(self, key: tuple[str, str]) -> Answer | None:
        return self._seen.get(key)

    def put(self, key: tuple[str, str], answer: Answer) -> None:
        self._seen[key] = answer
        self._seen.move_to_end(key)
        while len(self._seen) > self._size:
            self._seen.popitem(last=False)


def letter_offset(h: Header, raw: bytes) -> int:
    """A dead letter's ``source_offset``: 63 bits of a hash of sending facility + MSH-10 (of the
    raw bytes without them), so a re-sent message's letter has the same (source_topic,
    source_partition, source_offset) key in the sink. ``source_partition`` is -1 (not Kafka).

    >>> letter_offset(NO_HEADER, b"x") == letter_offset(NO_HEADER, b"x") >= 0
    True
    """
    ident = f"{h.sending_facility}|{h.control_id}".encode() if h.control_id else raw
    return int.from_bytes(hashlib.sha256(ident).digest()[:8], "big") >> 1


class Listener:
    """Handles one message at a time: :meth:`answer` returns the ACK's bytes."""

    def __init__(self, gate: KafkaGate, topics: Topics, ctx: MapContext,
                 recent: RecentAnswers | None = None) -> None:
        self.gate = gate
        self.topics = topics
        self.ctx = ctx
        self.recent = recent or RecentAnswers()

    async def answer(self, raw: bytes) -> bytes:
        text = decode(raw)
        codec = "utf-8" if text.encode("utf-8", "surrogatepass") == raw else "latin-1"
        try:
            h = read_header(text)
        except NotHl7 as exc:
            h = NO_HEADER
            result = await self._reject(h, raw, str(exc), ERR_INTERNAL)
        else:
            result = await self._handle(h, text, raw)
        return build_ack(h, result.code, error=result.error, text=result.text).encode(codec, "replace")

    async def _handle(self, h: Header, text: str, raw: bytes) -> Answer:
        key = (h.sending_facility, h.control_id)
        if h.control_id and (seen := self.recent.get(key)) is not None:
            log.info("re-sent control_id=%s: answered %s again", h.control_id, seen.code)
            return seen
        try:
            check_routable(h)
            event = map_adt(parse(text), h, self.ctx)
        except Unmappable as exc:
            result = await self._reject(h, raw, exc.reason, exc.error)
        except NotHl7 as exc:
            result = await self._reject(h, raw, str(exc), ERR_INTERNAL)
        else:
            try:
                await self.gate.send(self.topics.adt, event.patient_id.encode(), dump(event))
            except KafkaUnavailable as exc:
                log.warning("AE control_id=%s trigger=%s: Kafka did not store the event (%s)",
                            h.control_id, h.trigger, exc)
                return Answer("AE", ERR_INTERNAL, "Kafka unavailable, retry")
            log.debug("AA control_id=%s trigger=%s", h.control_id, h.trigger)
            result = Answer("AA")
        if h.control_id and result.code != "AE":
            self.recent.put(key, result)
        return result

    async def _reject(self, h: Header, raw: bytes, reason: str, error: tuple[str, str]) -> Answer:
        """AR once the dead letter is stored; AE when it is not (the sender retries)."""
        body, encoding = raw_text(raw)
        letter = DeadLetter(reason=reason, source_topic=DLQ_SOURCE, source_partition=-1,
                            source_offset=letter_offset(h, raw), raw=body, raw_encoding=encoding,
                            failed_at=datetime.now(timezone.utc))
        key = f"{h.sending_facility}|{h.control_id}".encode()
        try:
            await self.gate.send(self.topics.dlq, key, dump(letter))
        except KafkaUnavailable as exc:
            log.warning("AE control_id=%s: dead letter not stored (%s)", h.control_id or "-", exc)
            return Answer("AE", ERR_INTERNAL, "Kafka unavailable, retry")
        log.info("AR control_id=%s: %s", h.control_id or "-", reason)
        return Answer("AR", error, reason)

    async def connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one MLLP connection until the peer closes it."""
        framer = FrameReader()
        n = 0
        try:
            while data := await reader.read(64 * 1024):
                for payload in framer.feed(data):
                    writer.write(frame(await self.answer(payload)))
                    await writer.drain()
                    n += 1
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError) as exc:
            log.info("connection ended: %s", type(exc).__name__)
        finally:
            log.info("connection closed after %d messages (%d bytes outside frames)", n,
                     framer.dropped_bytes)
            writer.close()


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    """A server TLS context (TLS 1.2+) with this certificate chain and private key."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    return ctx


async def serve(listener: Listener, host: str, port: int, tls: ssl.SSLContext | None = None,
                started: asyncio.Event | None = None) -> None:
    """Listen until cancelled."""
    server = await asyncio.start_server(listener.connection, host, port, ssl=tls)
    addrs = ", ".join(str(sock.getsockname()[:2]) for sock in server.sockets)
    log.info("MLLP listener on %s%s", addrs, " (TLS)" if tls else "")
    if started is not None:
        started.set()
    async with server:
        await server.serve_forever()
