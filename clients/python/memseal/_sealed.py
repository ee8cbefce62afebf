"""Checking a descriptor and mapping it read-only (PROTOCOL.md section 8).

:func:`map_sealed` applies the checks, in the protocol's order, before
anything is mapped: a regular file; seals that include WRITE, GROW and
SHRINK (tested as a mask); the size, read after the seals and compared
with what the daemon announced; then a ``PROT_READ`` + ``MAP_PRIVATE``
mapping of exactly that size.

Lifetime. The mapping is a Python ``mmap`` object that this module never
closes explicitly: every view handed out (``view``, its slices, numpy
arrays) holds a buffer export on it, and Python unmaps it only when the
last reference goes. :meth:`Sealed.close` closes the descriptor and drops
the asset's own reference, so closing while views exist never unmaps
memory under them, and the mapping disappears with the last view.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import stat as _stat
from typing import TYPE_CHECKING, Any, Optional, Sequence, Tuple, TypeVar, Union

from ._errors import ClosedError, VerifyError
from ._messages import AssetInfo

if TYPE_CHECKING:  # numpy is optional: only the type checker imports it here.
    import numpy
    import numpy.typing

# Seal bits, fixed by the kernel ABI (<linux/fcntl.h>). All six are named
# so that error messages can say which seals a descriptor has and lacks.
F_SEAL_SEAL = 0x0001
F_SEAL_SHRINK = 0x0002
F_SEAL_GROW = 0x0004
F_SEAL_WRITE = 0x0008
F_SEAL_FUTURE_WRITE = 0x0010
F_SEAL_EXEC = 0x0020
F_GET_SEALS: int = getattr(fcntl, "F_GET_SEALS", 1034)

#: The seals that make a file immutable: nobody can write, grow or shrink it.
IMMUTABLE_SEALS = F_SEAL_WRITE | F_SEAL_GROW | F_SEAL_SHRINK

_SEAL_NAMES = (
    (F_SEAL_SEAL, "SEAL"),
    (F_SEAL_SHRINK, "SHRINK"),
    (F_SEAL_GROW, "GROW"),
    (F_SEAL_WRITE, "WRITE"),
    (F_SEAL_FUTURE_WRITE, "FUTURE_WRITE"),
    (F_SEAL_EXEC, "EXEC"),
)

_S = TypeVar("_S", bound="Sealed")

#: What :meth:`Sealed.ndarray` accepts as a shape.
ShapeLike = Union[int, Sequence[int], None]


def seal_names(bits: int) -> str:
    """The seals in ``bits`` as ``"SHRINK|GROW|WRITE"``, or ``"none"``."""
    names = [name for bit, name in _SEAL_NAMES if bits & bit]
    return "|".join(names) if names else "none"


def seals_of(fd: int) -> int:
    """The seals of ``fd``; :class:`VerifyError` if it cannot carry any."""
    try:
        seals: int = fcntl.fcntl(fd, F_GET_SEALS)
    except OSError as e:
        if e.errno == errno.EINVAL:
            raise VerifyError("the descriptor is not a sealable file (F_GET_SEALS: EINVAL)") from None
        raise VerifyError("cannot read the seals of the descriptor: %s" % e) from None
    return seals


def check_sealed(fd: int, expected_size: Optional[int] = None) -> int:
    """Checks 1 to 3 of section 8 on ``fd``; returns its size. Closes nothing."""
    info = os.fstat(fd)
    if not _stat.S_ISREG(info.st_mode):
        raise VerifyError("the descriptor is not a regular file (mode 0o%o)" % info.st_mode)
    seals = seals_of(fd)
    missing = IMMUTABLE_SEALS & ~seals
    if missing:
        raise VerifyError(
            "the descriptor is not sealed against changes: it has seals %s and lacks %s"
            % (seal_names(seals), seal_names(missing))
        )
    # fstat again, after the seal check: only now is the size frozen.
    size = os.fstat(fd).st_size
    if expected_size is not None and size != expected_size:
        raise VerifyError("the descriptor holds %d bytes but the daemon announced %d" % (size, expected_size))
    return size


def _verify_and_map(fd: int, expected_size: Optional[int]) -> Tuple[int, Optional[mmap.mmap]]:
    """All of section 8: the size and the mapping (None when empty).

    Closes ``fd`` on any failure.
    """
    try:
        size = check_sealed(fd, expected_size)
        if size == 0:
            return 0, None  # a size of 0 cannot be mapped
        try:
            return size, mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ)
        except (OSError, ValueError) as e:
            raise VerifyError("cannot map the descriptor: %s" % e) from None
    except BaseException:
        os.close(fd)
        raise


class Sealed:
    """A verified, sealed descriptor and a private read-only mapping of it.

    ``view`` is a read-only memoryview of the bytes, :meth:`ndarray` a
    read-only numpy array over them; neither copies. ``fd`` stays open
    until :meth:`close` (use it to hand the asset to a child, PROTOCOL.md
    section 13). Read through the mapping or with ``os.pread``, never with
    ``os.read``: the file offset is shared with every other holder.
    """

    def __init__(self, fd: int, expected_size: Optional[int] = None):
        """Verify ``fd`` and map it; takes ownership of ``fd``, closing it
        if a check fails (:class:`VerifyError`)."""
        self.fd = -1
        self.size, mapping = _verify_and_map(fd, expected_size)
        self.fd = fd
        self._view: Optional[memoryview] = memoryview(mapping if mapping is not None else b"")

    @property
    def closed(self) -> bool:
        return self._view is None

    @property
    def view(self) -> memoryview:
        """The bytes, as a read-only memoryview of the mapping.

        The memoryview (and any slice of it) keeps the mapping alive after
        :meth:`close`."""
        if self._view is None:
            raise ClosedError("the asset is closed; views taken before close() stay valid")
        return self._view

    def __len__(self) -> int:
        return self.size

    def __bytes__(self) -> bytes:
        return bytes(self.view)

    def fileno(self) -> int:
        return self.fd

    def ndarray(
        self,
        dtype: numpy.typing.DTypeLike,
        shape: ShapeLike = None,
        offset: int = 0,
    ) -> numpy.typing.NDArray[Any]:
        """A read-only numpy array over the bytes from ``offset``, no copy.

        ``shape`` defaults to as many items of ``dtype`` as the bytes from
        ``offset`` hold (which must be a whole number of them). The dtype,
        shape and offset are checked against the asset's size
        (:class:`~memseal.LayoutError`); writing to the array raises
        ``ValueError``. The array keeps the mapping alive on its own.
        Needs numpy (``pip install 'memseal[numpy]'``).
        """
        from ._numpy import array_view

        return array_view(self.view, dtype, shape, offset)

    def close(self) -> None:
        """Close the descriptor and let go of the mapping.

        Never raises because of views: the mapping stays as long as any
        view of it does, and goes away with the last one."""
        self._view = None
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

    def __enter__(self: _S) -> _S:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # Only the descriptor needs this; the mapping follows its references.
        if getattr(self, "fd", -1) >= 0:
            try:
                os.close(self.fd)
            except OSError:
                pass


def map_sealed(fd: int, expected_size: Optional[int] = None) -> Sealed:
    """Check ``fd`` as PROTOCOL.md section 8 requires and map it read-only.

    Takes ownership of ``fd``: on any failure it is closed and
    :class:`VerifyError` says why; on success it belongs to the returned
    :class:`Sealed`.
    """
    return Sealed(fd, expected_size)


class Asset(Sealed):
    """A fetched asset: its :class:`AssetInfo` and its verified bytes."""

    def __init__(self, info: AssetInfo, fd: int):
        """Verify ``fd`` against ``info`` and map it; takes ownership of ``fd``."""
        self.info = info
        super().__init__(fd, info.size)

    def __repr__(self) -> str:
        state = " closed" if self.closed else ""
        return "<Asset %s version %d, %d bytes%s>" % (self.info.name, self.info.version, self.size, state)
