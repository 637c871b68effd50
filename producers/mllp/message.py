r"""One HL7 v2 message: lenient decoding, parsing, its MSH header, and the ACK that answers it.

Parsing uses python-hl7 (the ``hl7`` package): it splits a message by the separators its own
MSH-1 / MSH-2 declare (feeds do not all use ``|^~\&``), keeps repetitions, components and
sub-components, and its accessors (``PID.F3.R1.C1``) read the spec's 1-based field numbers.
It does no version-specific validation, which suits a receiver of v2.3-v2.8 feeds that reads
a few fields and judges them itself (:mod:`producers.mllp.mapping`). :func:`field` makes a
missing segment, field or repetition read as empty, as HL7 treats them.

ACKs are built here (original mode, table 0008 codes AA / AE / AR), not with python-hl7's
``create_ack``, so that an ACK can also answer a message whose MSH is broken and carries an
ERR segment in the form of the message's version.

>>> raw = b"MSH|^~\\&|EHR|F01|WS|WS|20250101120000||ADT^A01^ADT_A01|C1|P|2.5\rPID|1||M1^^^F01^MR"
>>> h = read_header(decode(raw))
>>> h.sending_facility, h.message_type, h.trigger, h.control_id, h.version
('F01', 'ADT', 'A01', 'C1', '2.5')
>>> print(build_ack(h, "AA", now=datetime(2025, 1, 1, 12, 0, 1), ack_id="K1").replace("\r", "\n"))
MSH|^~\&|WS|WS|EHR|F01|20250101120001||ACK^A01^ACK|K1|P|2.5
MSA|AA|C1
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone

import hl7

SUPPORTED_VERSIONS = ("2.3", "2.4", "2.5", "2.6", "2.7", "2.8")  # and their .1 / .2 point releases
_SEGMENT_BREAK = re.compile(r"\r\n|\n|\r")


class NotHl7(ValueError):
    """The bytes are not an HL7 v2 message (no MSH segment, or an unreadable one)."""


def decode(raw: bytes) -> str:
    """The message as text: UTF-8 when it is valid UTF-8, else latin-1 (ISO 8859-1).

    MSH-18 (character set) is empty in most feeds, and legacy systems send 8859-1; bytes that are
    not UTF-8 decode as latin-1, which never fails.

    >>> decode("Müller".encode("utf-8")), decode("Müller".encode("latin-1"))
    ('Müller', 'Müller')
    """
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def normalize(text: str) -> str:
    """Segments separated by ``\r`` only (files and some senders use ``\n`` or ``\r\n``), with
    blank segments and surrounding whitespace dropped."""
    return "\r".join(s for s in (p.strip() for p in _SEGMENT_BREAK.split(text)) if s)


@dataclass(frozen=True)
class Header:
    """The MSH fields a receiver needs to route and acknowledge a message."""

    field_sep: str
    encoding_chars: str
    sending_app: str
    sending_facility: str  # MSH-4.1 (HD namespace id)
    receiving_app: str
    receiving_facility: str
    message_type: str  # MSH-9.1
    trigger: str  # MSH-9.2
    control_id: str  # MSH-10
    processing_id: str
    version: str  # MSH-12.1

    @property
    def component_sep(self) -> str:
        return self.encoding_chars[:1] or "^"


def read_header(text: str) -> Header:
    """The MSH of ``text``, read with its own separators; raises :class:`NotHl7` without one.

    Read by hand, not by the parser, so that a message whose body is broken still gets an ACK
    that echoes its control id.

    >>> read_header("MSH#$%*\\&#A#F#R#G#20250101##ADT$A03#X9#T#2.3").trigger
    'A03'
    >>> read_header("PID|1")
    Traceback (most recent call last):
    ...
    producers.mllp.message.NotHl7: no MSH segment
    """
    text = normalize(text)
    if not text.startswith("MSH") or len(text) < 8:
        raise NotHl7("no MSH segment")
    sep = text[3]
    msh = text.split("\r", 1)[0]
    parts = msh.split(sep)  # parts[n - 1] is MSH-n (MSH-1 is the separator itself)
    enc = parts[1] if len(parts) > 1 else ""
    comp = enc[:1] or "^"

    def f(n: int) -> str:
        return parts[n - 1] if len(parts) > n - 1 else ""

    def c(n: int, k: int = 1) -> str:
        first_rep = f(n).split(enc[1:2] or "~")[0]
        comps = first_rep.split(comp)
        return comps[k - 1] if len(comps) >= k else ""

    return Header(field_sep=sep, encoding_chars=enc, sending_app=c(3), sending_facility=c(4),
                  receiving_app=c(5), receiving_facility=c(6), message_type=c(9, 1),
                  trigger=c(9, 2), control_id=f(10), processing_id=c(11), version=c(12))


def version_supported(version: str) -> bool:
    """HL7 v2.3 to v2.8 (with point releases); an empty MSH-12 is accepted (lenient).

    >>> [version_supported(v) for v in ("2.3.1", "2.5", "2.8.2", "", "2.2", "3.0")]
    [True, True, True, True, False, False]
    """
    if not version:
        return True
    return any(version == v or version.startswith(v + ".") for v in SUPPORTED_VERSIONS)


def parse(text: str) -> hl7.Message:
    """The whole message, parsed by python-hl7 (raises :class:`NotHl7` when it cannot be)."""
    try:
        return hl7.parse(normalize(text))
    except (hl7.ParseException, ValueError, IndexError, KeyError) as exc:
        raise NotHl7(f"unparseable message ({type(exc).__name__})") from None


def field(msg: hl7.Message, key: str) -> str:
    """``msg[key]`` (python-hl7 accessor, e.g. ``"PV1.F3.R1.C1"``), or ``""`` when the segment,
    field, repetition or component is absent."""
    try:
        return str(msg[key])
    except (KeyError, IndexError):
        return ""


# --------------------------------------------------------------------------- ACKs

# HL7 table 0357 (message error condition codes) used in ERR
ERR_UNSUPPORTED_TYPE = ("200", "Unsupported message type")
ERR_UNSUPPORTED_EVENT = ("201", "Unsupported event code")
ERR_UNSUPPORTED_VERSION = ("203", "Unsupported version id")
ERR_REQUIRED_MISSING = ("101", "Required field missing")
ERR_TABLE_VALUE = ("103", "Table value not found")
ERR_INTERNAL = ("207", "Application internal error")


def build_ack(h: Header, code: str, *, error: tuple[str, str] | None = None, text: str = "",
              now: datetime | None = None, ack_id: str | None = None) -> str:
    """The ACK of the message with header ``h``: MSH (sender and receiver swapped, MSH-9
    ``ACK^<trigger>^ACK``, the message's version and processing id), MSA (``code``, MSA-2 = the
    message's MSH-10) and, for AE / AR, an ERR with the table 0357 ``error`` and ``text``.

    The ERR follows the message's version: ERR-1 (code and location) before v2.5, ERR-3 / ERR-4
    (error code, severity) / ERR-8 (user message) from v2.5 on. ``text`` must carry no patient data.

    >>> h = read_header("MSH|^~\\\\&|EHR|F01|WS|WS|20250101||ORU^R01|C7|P|2.3")
    >>> build_ack(h, "AR", error=ERR_UNSUPPORTED_TYPE, text="not ADT", now=datetime(2025, 1, 1),
    ...           ack_id="K2").split("\\r")[1:]
    ['MSA|AR|C7|not ADT', 'ERR|^^^200&Unsupported message type']
    """
    s = h.field_sep
    enc = h.encoding_chars or "^~\\&"
    comp = enc[0]
    sub = enc[3:4] or "&"
    now = now or datetime.now(timezone.utc)
    ack_id = ack_id or uuid.uuid4().hex[:20]
    msh = s.join(["MSH", enc, _safe(h.receiving_app, s, enc), _safe(h.receiving_facility, s, enc),
                  _safe(h.sending_app, s, enc), _safe(h.sending_facility, s, enc),
                  now.strftime("%Y%m%d%H%M%S"), "",
                  comp.join(["ACK", _safe(h.trigger, s, enc), "ACK"]), ack_id,
                  _safe(h.processing_id, s, enc) or "P", _safe(h.version, s, enc) or "2.5"])
    modern = h.version[:3] >= "2.5"
    text = _safe(text, s, enc)
    msa = s.join(["MSA", code, _safe(h.control_id, s, enc)] + ([] if modern or not text else [text]))
    segments = [msh, msa]
    if error is not None:
        num, name = error
        if modern:
            segments.append(s.join(["ERR", "", "", comp.join([num, name, "HL70357"]), "E", "", "",
                                    "", text]))
        else:
            segments.append(s.join(["ERR", comp * 3 + sub.join([num, name])]))
    return "\r".join(segments)


def _safe(value: str, field_sep: str, enc: str) -> str:
    """``value`` without separator characters (header values are echoed, not escaped)."""
    for ch in field_sep + enc:
        value = value.replace(ch, " ")
    return value
