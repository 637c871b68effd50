r"""An MLLP sender (blocking sockets): one message at a time, each after the previous one's ACK,
as HL7 interface engines send.

:meth:`MllpClient.deliver` sends one message until it gets a final answer: AA (stored) or AR
(refused for good) are returned; on AE (the receiver could not store it now), a timeout or a
dropped connection it waits (exponential backoff) and sends the same bytes again, reconnecting
when needed; the receiver recognises the re-send by MSH-4 + MSH-10. An ACK that answers another
control id is an error (the stream of ACKs is out of step).

>>> parse_ack("MSH|^~\\&|WS|WS|EHR|F01|20250101||ACK^A01^ACK|K1|P|2.5\rMSA|AA|C1")
Ack(code='AA', control_id='C1', text='')
>>> parse_ack("MSH|^~\\&|WS|WS|EHR|F01|20250101||ACK^A08^ACK|K2|P|2.5\rMSA|AR|C2\r"
...           "ERR|||201^Unsupported event code^HL70357|E||||unsupported ADT trigger A08").text
'unsupported ADT trigger A08'
"""

from __future__ import annotations

import socket
import ssl
import time
from typing import NamedTuple

from producers.mllp.framing import FrameReader, frame


class MllpError(RuntimeError):
    """The receiver gave no usable answer (retries exhausted, or an ACK out of step)."""


class Ack(NamedTuple):
    code: str  # MSA-1: AA, AE, AR (or CA, CE, CR)
    control_id: str  # MSA-2: the acknowledged message's MSH-10
    text: str  # MSA-3 (before v2.5) or ERR-8 / ERR-3.2 (v2.5 on): the receiver's reason


def parse_ack(text: str) -> Ack:
    """MSA-1, MSA-2 and the error text of an ACK message (``|`` separators as in its MSH)."""
    segments = {}
    for seg in text.replace("\n", "\r").split("\r"):
        if seg[:3] and seg[:3] not in segments:
            segments[seg[:3]] = seg
    sep = text[3:4] or "|"
    msa = segments.get("MSA", "").split(sep)
    err = segments.get("ERR", "").split(sep)
    reason = msa[3] if len(msa) > 3 else ""
    if not reason and len(err) > 8:
        reason = err[8]
    if not reason and len(err) > 3:
        reason = err[3].split("^")[1] if "^" in err[3] else err[3]
    return Ack(msa[1] if len(msa) > 1 else "", msa[2] if len(msa) > 2 else "", reason)


class MllpClient:
    """A connection to an MLLP listener (opened on first use, re-opened after a failure)."""

    def __init__(self, host: str, port: int, *, timeout: float = 30.0, retries: int = 8,
                 backoff: float = 0.2, max_backoff: float = 10.0,
                 tls: ssl.SSLContext | None = None) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.retries, self.backoff, self.max_backoff = retries, backoff, max_backoff
        self.tls = tls
        self.resends = 0  # messages sent again (after AE, a timeout or a lost connection)
        self._sock: socket.socket | None = None
        self._reader = FrameReader()

    def __enter__(self) -> "MllpClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None

    def _connect(self) -> socket.socket:
        if self._sock is None:
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.tls is not None:
                sock = self.tls.wrap_socket(sock, server_hostname=self.host)
            self._sock = sock
            self._reader = FrameReader()
        return self._sock

    def exchange_ready(self) -> None:
        """Connect now (raises OSError), so that an unreachable listener fails at once."""
        self._connect()

    def exchange(self, payload: bytes) -> bytes:
        """Send one message, return the next ACK's payload (raises OSError / TimeoutError)."""
        sock = self._connect()
        sock.sendall(frame(payload))
        while True:
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("the listener closed the connection")
            frames = self._reader.feed(data)
            if frames:
                return frames[0]

    def deliver(self, payload: bytes, control_id: str) -> Ack:
        """Send until AA or AR (see the module doc); :class:`MllpError` after ``retries`` re-sends."""
        delay = self.backoff
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                self.resends += 1
                time.sleep(delay)
                delay = min(delay * 2, self.max_backoff)
            try:
                ack = parse_ack(self.exchange(payload).decode("utf-8", "replace"))
            except OSError as exc:  # includes timeouts and a refused connection
                self.close()
                last = type(exc).__name__
                continue
            if ack.control_id != control_id:
                self.close()
                raise MllpError(f"ACK for control id {ack.control_id!r} while waiting for {control_id!r}")
            if ack.code in ("AA", "CA", "AR", "CR"):
                return ack
            last = f"{ack.code} {ack.text}".strip()
        raise MllpError(f"control id {control_id}: no AA / AR after {self.retries} re-sends (last: {last})")
