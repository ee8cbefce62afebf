"""numpy views of sealed bytes: the one place that imports numpy.

Imported only when a caller asks for an array (``Sealed.ndarray``,
``memseal.safetensors``), so the rest of the package needs nothing but
the standard library.
"""

from __future__ import annotations

import operator
from typing import Any, Tuple

try:
    import numpy
    import numpy.typing
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        "memseal's numpy views need numpy: pip install 'memseal[numpy]' (%s)" % e, name=e.name
    ) from e

from ._errors import LayoutError
from ._sealed import ShapeLike


def _dtype(dtype: numpy.typing.DTypeLike) -> numpy.dtype[Any]:
    try:
        dt: numpy.dtype[Any] = numpy.dtype(dtype)
    except TypeError as e:
        raise LayoutError("%r is not a numpy dtype: %s" % (dtype, e)) from None
    if dt.hasobject:
        raise LayoutError("dtype %s holds Python objects; only plain data can be viewed" % dt)
    if dt.itemsize == 0:
        raise LayoutError("dtype %s has no size; give a sized dtype such as 'S8' or 'V16'" % dt)
    return dt


def _shape(shape: ShapeLike, dt: numpy.dtype[Any], available: int, offset: int) -> Tuple[int, ...]:
    if shape is None:
        if available % dt.itemsize:
            raise LayoutError(
                "the %d bytes from offset %d are not a whole number of %s items (%d bytes each); "
                "give a shape" % (available, offset, dt, dt.itemsize)
            )
        return (available // dt.itemsize,)
    dims = (shape,) if isinstance(shape, int) else tuple(shape)
    try:
        dims = tuple(operator.index(d) for d in dims)
    except TypeError:
        raise LayoutError("shape %r must hold integers" % (shape,)) from None
    if any(d < 0 for d in dims):
        raise LayoutError("shape %r has a negative dimension" % (dims,))
    return dims


def array_view(
    buffer: memoryview, dtype: numpy.typing.DTypeLike, shape: ShapeLike, offset: int
) -> numpy.typing.NDArray[Any]:
    """A read-only array of ``dtype`` and ``shape`` over ``buffer`` from
    ``offset``, every argument checked against the buffer's length."""
    dt = _dtype(dtype)
    if isinstance(offset, bool) or not isinstance(offset, int):
        raise LayoutError("offset %r is not an integer" % (offset,))
    size = len(buffer)
    if not 0 <= offset <= size:
        raise LayoutError("offset %d is outside the asset's %d bytes" % (offset, size))
    available = size - offset
    dims = _shape(shape, dt, available, offset)
    count = 1
    for d in dims:
        count *= d
    need = count * dt.itemsize
    if need > available:
        raise LayoutError(
            "shape %r of %s needs %d bytes from offset %d, but the asset holds %d bytes there "
            "(%d in all)" % (dims, dt, need, offset, available, size)
        )
    # A slice of exactly the bytes: the array holds it, and it holds the mapping.
    array = numpy.frombuffer(buffer[offset : offset + need], dtype=dt, count=count)
    return array.reshape(dims)
