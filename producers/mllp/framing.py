"""MLLP framing: ``0x0B message 0x1C 0x0D`` on a TCP stream (HL7 v2 Minimal Lower Layer Protocol).

TCP delivers bytes, not frames: a read may hold half a frame, or several. :class:`FrameReader`
buffers what it is fed and returns every complete frame; bytes before a start block (line noise,
a sender's keep-alive newline) are dropped, as MLLP receivers commonly do.

>>> r = FrameReader()
>>> r.feed(b"junk\\x0bMSH|a\\rPID|1")
[]
>>> r.feed(b"\\x1c\\r\\x0bMSH|b\\x1c\\r\\x0bMSH")
[b'MSH|a\\rPID|1', b'MSH|b']
>>> r.feed(b"|c\\x1c") , r.feed(b"\\r")
([], [b'MSH|c'])
>>> frame(b"MSH|d")
b'\\x0bMSH|d\\x1c\\r'
"""

from __future__ import annotations

START = b"\x0b"
END = b"\x1c\x0d"
MAX_FRAME = 16 * 1024 * 1024  # a frame larger than this is not an HL7 message: the reader resets


def frame(payload: bytes) -> bytes:
    """``payload`` wrapped in MLLP start and end blocks."""
    return START + payload + END


class FrameReader:
    """Incremental MLLP decoder: :meth:`feed` bytes, get the complete frames' payloads.

    A start block inside an unfinished frame starts a new frame (the sender gave up on the
    previous one); a frame past :data:`MAX_FRAME` bytes is dropped.
    """

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._buf = bytearray()
        self._max = max_frame
        self.dropped_bytes = 0  # junk seen outside frames (a count, never the bytes: no patient data)

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        frames: list[bytes] = []
        while True:
            start = self._buf.find(START)
            if start < 0:
                self.dropped_bytes += len(self._buf)
                self._buf.clear()
                return frames
            if start:
                self.dropped_bytes += start
                del self._buf[:start]
            end = self._buf.find(END, 1)
            if end < 0:
                if len(self._buf) > self._max:
                    self.dropped_bytes += len(self._buf)
                    self._buf.clear()
                return frames
            restart = self._buf.rfind(START, 1, end)
            if restart > 0:  # an abandoned frame before this one
                self.dropped_bytes += restart
                del self._buf[:restart]
                end -= restart
            frames.append(bytes(self._buf[1:end]))
            del self._buf[:end + len(END)]
