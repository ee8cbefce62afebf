"""safetensors files published as assets, as read-only numpy views.

A safetensors file is an 8-byte little-endian header length N, N bytes of
JSON naming each tensor's dtype, shape and byte range (``data_offsets``,
relative to the first byte after the header), an optional
``__metadata__`` object of strings, and then the tensor bytes.

:func:`load` fetches such an asset and returns every tensor as a numpy
array that is a view of the one sealed mapping: no copy, not writable,
and shared with every other process that maps the asset. :func:`open`
parses the header and makes each view only when asked.

The header comes from whoever published the asset, so it is parsed here,
not trusted: :func:`parse_header` checks that the length fits the asset,
that the JSON is an object without duplicate keys, that every dtype is one
the format defines, that every shape and offset is a non-negative integer,
that each tensor's byte range matches its dtype and shape, and that the
ranges tile the data exactly (no gap, no overlap, nothing past the end),
the same rules the reference implementation applies. Anything else raises
:class:`~memseal.HeaderError`. numpy has no type for BF16, the F8, F6 and
F4 formats: those tensors are checked like the others, and their bytes are
available with :meth:`SafeTensorsFile.raw`.

torch tensors are not offered: no torch can be installed and tested here,
so there is no untested path for them. ``torch.from_numpy`` of a view
shares its memory, but torch does not honour numpy's read-only flag.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Tuple

from . import _numpy  # noqa: F401 - first, for its advice when numpy is missing

import numpy
import numpy.typing

from ._client import Client
from ._errors import HeaderError, LayoutError
from ._messages import HashLike
from ._numpy import array_view
from ._sealed import Sealed

__all__ = ["DTYPES", "MAX_HEADER_SIZE", "TensorInfo", "Header", "SafeTensorsFile", "parse_header", "open", "load"]

#: Largest header accepted, as in the reference implementation.
MAX_HEADER_SIZE = 100_000_000

#: Every dtype the format defines: its size in bits, and the numpy dtype
#: (little-endian, as the format stores it), or None where numpy has none.
DTYPES: Dict[str, Tuple[int, Optional[str]]] = {
    "BOOL": (8, "?"),
    "U8": (8, "u1"),
    "I8": (8, "i1"),
    "F8_E5M2": (8, None),
    "F8_E4M3": (8, None),
    "F8_E8M0": (8, None),
    "F8_E4M3FNUZ": (8, None),
    "F8_E5M2FNUZ": (8, None),
    "F4": (4, None),
    "F6_E2M3": (6, None),
    "F6_E3M2": (6, None),
    "I16": (16, "<i2"),
    "U16": (16, "<u2"),
    "F16": (16, "<f2"),
    "BF16": (16, None),
    "I32": (32, "<i4"),
    "U32": (32, "<u4"),
    "F32": (32, "<f4"),
    "C64": (64, "<c8"),
    "F64": (64, "<f8"),
    "I64": (64, "<i8"),
    "U64": (64, "<u8"),
}

_METADATA_KEY = "__metadata__"


@dataclass(frozen=True)
class TensorInfo:
    """One tensor as the header describes it; offsets are relative to the
    first byte after the header."""

    name: str
    dtype: str
    shape: Tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclass(frozen=True)
class Header:
    """A parsed, checked header: tensors in the order of their bytes."""

    tensors: Dict[str, TensorInfo]
    metadata: Optional[Dict[str, str]]
    data_start: int
    """Where the tensor bytes start in the file: 8 + the header length."""


def _no_duplicates(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
    result: Dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise HeaderError("the header names %r twice" % key)
        result[key] = value
    return result


def _refuse_constant(name: str) -> Any:
    raise HeaderError("the header holds %s, which is not JSON" % name)


def _natural(value: Any, what: str) -> int:
    """A JSON integer that fits an unsigned 64-bit one (not a float, not a boolean)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 64:
        raise HeaderError("%s must be an integer from 0 to 2**64-1, not %r" % (what, value))
    return int(value)


def _tensor_info(name: str, entry: Any) -> TensorInfo:
    if not isinstance(entry, dict):
        raise HeaderError("tensor %r is described by %r, not an object" % (name, entry))
    try:
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    except KeyError as e:
        raise HeaderError("tensor %r has no %s" % (name, e)) from None
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise HeaderError("tensor %r has dtype %r, which the format does not define" % (name, dtype))
    if not isinstance(shape, list):
        raise HeaderError("tensor %r has shape %r, not a list" % (name, shape))
    dims = tuple(_natural(d, "each dimension of tensor %r" % name) for d in shape)
    if not isinstance(offsets, list) or len(offsets) != 2:
        raise HeaderError("tensor %r has data_offsets %r, not [begin, end]" % (name, offsets))
    begin, end = (_natural(o, "data_offsets of tensor %r" % name) for o in offsets)
    if end < begin:
        raise HeaderError("tensor %r ends (%d) before it begins (%d)" % (name, end, begin))
    bits = 0 if 0 in dims else DTYPES[dtype][0]
    for d in dims:
        bits *= d
        if bits > 8 * (end - begin):
            break  # already too large: no need to multiply out a hostile shape
    if bits % 8:
        raise HeaderError("tensor %r of %s and shape %r does not end on a byte boundary" % (name, dtype, dims))
    if bits // 8 != end - begin:
        raise HeaderError(
            "tensor %r of %s and shape %r needs %d bytes, but its data_offsets span %d"
            % (name, dtype, dims, bits // 8, end - begin)
        )
    return TensorInfo(name, dtype, dims, begin, end)


def _check_tiling(tensors: List[TensorInfo], data_len: int) -> None:
    """The byte ranges must cover the data exactly, each byte once."""
    expected = 0
    previous: Optional[TensorInfo] = None
    for t in tensors:
        if t.begin < expected and previous is not None:
            raise HeaderError(
                "tensor %r (bytes %d..%d) overlaps tensor %r (bytes %d..%d)"
                % (t.name, t.begin, t.end, previous.name, previous.begin, previous.end)
            )
        if t.begin != expected:
            raise HeaderError("bytes %d..%d of the data belong to no tensor" % (expected, t.begin))
        expected = t.end
        previous = t
    if expected > data_len:
        raise HeaderError(
            "tensor %r ends at byte %d of the data, past the %d bytes the asset holds after its header"
            % (previous.name if previous else "", expected, data_len)
        )
    if expected < data_len:
        raise HeaderError("bytes %d..%d of the data belong to no tensor" % (expected, data_len))


def parse_header(buffer: memoryview) -> Header:
    """Parse and check the header at the start of ``buffer`` (the whole
    file); :class:`~memseal.HeaderError` says what is wrong with it."""
    size = len(buffer)
    if size < 8:
        raise HeaderError("%d bytes are too few for a safetensors file (the header length alone is 8)" % size)
    (length,) = struct.unpack("<Q", buffer[:8])
    if length > MAX_HEADER_SIZE:
        raise HeaderError("the header length %d is above the %d-byte limit" % (length, MAX_HEADER_SIZE))
    if length > size - 8:
        raise HeaderError("the header length says %d bytes, but the asset holds only %d after it" % (length, size - 8))
    try:
        text = bytes(buffer[8 : 8 + length]).decode("utf-8")
    except UnicodeDecodeError as e:
        raise HeaderError("the header is not UTF-8: %s" % e) from None
    try:
        document = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as e:
        if isinstance(e, HeaderError):
            raise
        raise HeaderError("the header is not JSON: %s" % e) from None
    if not isinstance(document, dict):
        raise HeaderError("the header is %s, not a JSON object" % type(document).__name__)
    metadata = document.pop(_METADATA_KEY, None)
    if metadata is not None and not (
        isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())
    ):
        raise HeaderError("%s must map strings to strings, not %r" % (_METADATA_KEY, metadata))
    infos = sorted((_tensor_info(name, entry) for name, entry in document.items()), key=lambda t: (t.begin, t.end))
    _check_tiling(infos, size - 8 - length)
    return Header({t.name: t for t in infos}, metadata, 8 + length)


class SafeTensorsFile:
    """The tensors of a sealed safetensors asset, each made on demand.

    The header is parsed and checked once, here; :meth:`get_tensor` then
    makes one read-only view at a time. Arrays stay valid after
    :meth:`close`: each keeps the mapping alive on its own.
    """

    def __init__(self, sealed: Sealed):
        """Parse ``sealed``'s header; the file owns ``sealed`` from now on."""
        self.sealed = sealed
        try:
            self.header = parse_header(sealed.view)
        except HeaderError as e:
            sealed.close()
            # The traceback and the context hold parse_header's frames, and
            # with them a view that would keep the refused mapping alive.
            e.__context__ = None
            raise e.with_traceback(None)
        except BaseException:
            sealed.close()
            raise

    def keys(self) -> List[str]:
        """The tensor names, in the order of their bytes."""
        return list(self.header.tensors)

    def __iter__(self) -> Iterator[str]:
        return iter(self.header.tensors)

    def __len__(self) -> int:
        return len(self.header.tensors)

    def __contains__(self, name: object) -> bool:
        return name in self.header.tensors

    def metadata(self) -> Optional[Dict[str, str]]:
        """The header's ``__metadata__``, or None when it has none."""
        return None if self.header.metadata is None else dict(self.header.metadata)

    def info(self, name: str) -> TensorInfo:
        """What the header says about tensor ``name`` (KeyError if absent)."""
        return self.header.tensors[name]

    def raw(self, name: str) -> memoryview:
        """The bytes of tensor ``name``, read-only, for any dtype."""
        t = self.info(name)
        start = self.header.data_start + t.begin
        return self.sealed.view[start : start + t.nbytes]

    def get_tensor(self, name: str) -> numpy.typing.NDArray[Any]:
        """Tensor ``name`` as a read-only numpy view of the mapping."""
        t = self.info(name)
        dtype = DTYPES[t.dtype][1]
        if dtype is None:
            raise LayoutError(
                "tensor %r has dtype %s, which numpy has no type for; its bytes are in .raw(%r)"
                % (name, t.dtype, name)
            )
        return array_view(self.sealed.view, numpy.dtype(dtype), t.shape, self.header.data_start + t.begin)

    __getitem__ = get_tensor

    def load(self) -> Dict[str, numpy.typing.NDArray[Any]]:
        """Every tensor, by name, in the order of their bytes."""
        return {name: self.get_tensor(name) for name in self.header.tensors}

    def close(self) -> None:
        """Close the asset; arrays already made stay valid."""
        self.sealed.close()

    def __enter__(self) -> SafeTensorsFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open(  # noqa: A001 - the name mirrors safetensors.safe_open and builtins.open
    name: str,
    client: Optional[Client] = None,
    *,
    version: Optional[int] = None,
    hash: Optional[HashLike] = None,
) -> SafeTensorsFile:
    """Fetch asset ``name`` (latest, or the given version or hash) and
    parse its safetensors header. Without ``client``, a connection to the
    default socket is opened for the fetch and closed after it."""
    if client is not None:
        return SafeTensorsFile(client.fetch(name, version=version, hash=hash))
    with Client() as own:
        return SafeTensorsFile(own.fetch(name, version=version, hash=hash))


def load(
    name: str,
    client: Optional[Client] = None,
    *,
    version: Optional[int] = None,
    hash: Optional[HashLike] = None,
) -> Dict[str, numpy.typing.NDArray[Any]]:
    """Every tensor of the safetensors asset ``name``, as read-only numpy
    views of its one sealed mapping (see :func:`open` for the arguments)."""
    with open(name, client, version=version, hash=hash) as tensors:
        return tensors.load()
