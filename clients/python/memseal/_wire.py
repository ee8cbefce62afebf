"""The bincode rules of PROTOCOL.md section 5: values to bytes and back.

:class:`Encoder` appends values to a buffer; :class:`Decoder` reads them
from the message bytes of one frame and refuses anything malformed with
:class:`~memseal.ProtocolError`. Nothing here knows about messages.
"""

from __future__ import annotations

import struct
from typing import Callable, List, Optional, TypeVar

from ._errors import ProtocolError

T = TypeVar("T")

U32_MAX = 0xFFFFFFFF
U64_MAX = 0xFFFFFFFFFFFFFFFF

#: First byte of a varint longer than one byte: (payload size, struct format, bits).
_VARINT_FORMS = {0xFB: (2, "<H", 16), 0xFC: (4, "<I", 32), 0xFD: (8, "<Q", 64)}


class Encoder:
    """Appends bincode-encoded values to ``out``; every method returns self."""

    def __init__(self) -> None:
        self.out = bytearray()

    def varint(self, value: int) -> Encoder:
        """An unsigned integer in its shortest varint form (section 5.1)."""
        if value < 0 or value > U64_MAX:
            raise ValueError("%d does not fit an unsigned 64-bit integer" % value)
        if value <= 250:
            self.out.append(value)
        elif value <= 0xFFFF:
            self.out += b"\xfb" + struct.pack("<H", value)
        elif value <= U32_MAX:
            self.out += b"\xfc" + struct.pack("<I", value)
        else:
            self.out += b"\xfd" + struct.pack("<Q", value)
        return self

    def u32(self, value: int) -> Encoder:
        if value > U32_MAX:
            raise ValueError("%d does not fit an unsigned 32-bit integer" % value)
        return self.varint(value)

    def u8(self, value: int) -> Encoder:
        self.out.append(value)
        return self

    def string(self, text: str) -> Encoder:
        data = text.encode("utf-8")
        self.varint(len(data))
        self.out += data
        return self

    def raw(self, data: bytes) -> Encoder:
        self.out += data
        return self

    def option(self, value: Optional[T], write: Callable[[T], object]) -> Encoder:
        if value is None:
            return self.u8(0)
        self.u8(1)
        write(value)
        return self

    def bytes(self) -> bytes:
        return bytes(self.out)


class Decoder:
    """Reads bincode-encoded values from one frame's message bytes."""

    def __init__(self, data: bytes):
        self.data = memoryview(data)
        self.pos = 0

    def _take(self, n: int) -> memoryview:
        left = len(self.data) - self.pos
        if n > left:
            raise ProtocolError("malformed reply: needs %d more byte(s) than the frame holds" % (n - left))
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def u8(self) -> int:
        return int(self._take(1)[0])

    def varint(self, bits: int = 64) -> int:
        first = self.u8()
        if first <= 250:
            return first
        form = _VARINT_FORMS.get(first)
        if form is None or form[2] > bits:
            raise ProtocolError("malformed reply: invalid %d-bit integer tag 0x%02x" % (bits, first))
        size, fmt, _ = form
        value: int = struct.unpack(fmt, self._take(size))[0]
        return value

    def u32(self) -> int:
        return self.varint(32)

    def u64(self) -> int:
        return self.varint(64)

    def string(self) -> str:
        length = self.u64()
        try:
            return bytes(self._take(length)).decode("utf-8")
        except UnicodeDecodeError as e:
            raise ProtocolError("malformed reply: a string is not UTF-8 (%s)" % e) from None

    def raw(self, n: int) -> bytes:
        return bytes(self._take(n))

    def option(self, read: Callable[[], T]) -> Optional[T]:
        tag = self.u8()
        if tag == 0:
            return None
        if tag == 1:
            return read()
        raise ProtocolError("malformed reply: option tag %d" % tag)

    def vec(self, read: Callable[[Decoder], T]) -> List[T]:
        count = self.u64()
        # Every element of the protocol's vectors takes at least one byte,
        # so a count beyond the bytes left is a lie, refused before looping.
        if count > len(self.data) - self.pos:
            raise ProtocolError("malformed reply: %d element(s) declared in fewer bytes" % count)
        return [read(self) for _ in range(count)]

    def finish(self) -> None:
        extra = len(self.data) - self.pos
        if extra:
            raise ProtocolError("malformed reply: %d unexpected byte(s) after the message" % extra)
