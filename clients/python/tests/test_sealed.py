"""What a fetched asset guarantees: sealed, read-only, and alive while viewed."""

from __future__ import annotations

import fcntl
import gc
import os
import subprocess
import sys
from typing import List, Tuple

import numpy as np
import pytest

import memseal
from procinfo import mapped_inode, open_fds_of

ALL_FOUR = memseal.F_SEAL_WRITE | memseal.F_SEAL_GROW | memseal.F_SEAL_SHRINK | memseal.F_SEAL_SEAL


def numbers(client: memseal.Client, name: str = "t/numbers", count: int = 1024) -> memseal.Asset:
    client.publish_bytes(name, np.arange(count, dtype="<f8").tobytes())
    return client.fetch(name)


def test_the_received_descriptor_carries_the_four_seals(client: memseal.Client) -> None:
    with numbers(client) as asset:
        seals = fcntl.fcntl(asset.fd, fcntl.F_GET_SEALS)
        assert seals & ALL_FOUR == ALL_FOUR, memseal.seal_names(seals)
        # And the kernel refuses every change through it.
        for change in (lambda: os.pwrite(asset.fd, b"x", 0), lambda: os.ftruncate(asset.fd, 1)):
            with pytest.raises(OSError):
                change()


def maps_of(inode: int) -> List[List[str]]:
    """The lines of /proc/self/maps for the file with this inode, split."""
    with open("/proc/self/maps") as maps:
        return [line.split() for line in maps if line.split()[4:5] == [str(inode)]]


def mapping_range(inode: int) -> Tuple[int, int]:
    (line,) = maps_of(inode)
    start, end = line[0].split("-")
    return int(start, 16), int(end, 16)


def test_the_mapping_is_private_and_read_only(client: memseal.Client) -> None:
    with numbers(client) as asset:
        lines = maps_of(os.fstat(asset.fd).st_ino)
        assert len(lines) == 1 and lines[0][1] == "r--p", lines


def test_neither_the_view_nor_an_array_can_be_written(client: memseal.Client) -> None:
    with numbers(client) as asset:
        with pytest.raises(TypeError):
            asset.view[0] = 1
        array = asset.ndarray("<f8")
        assert not array.flags.writeable
        with pytest.raises(ValueError, match="read-only"):
            array[0] = 42.0
        with pytest.raises(ValueError):
            array.flags.writeable = True
        with pytest.raises(ValueError):
            np.copyto(array, 0.0)
        assert array[0] == 0.0


def test_ndarray_views_the_bytes_without_copying(client: memseal.Client) -> None:
    with numbers(client, count=24) as asset:
        whole = asset.ndarray("<f8")
        assert whole.tolist() == list(range(24))
        grid = asset.ndarray(np.float64, shape=(4, 6))
        assert grid[3, 5] == 23.0
        tail = asset.ndarray("<f8", shape=2, offset=8 * 22)
        assert tail.tolist() == [22.0, 23.0]
        raw = asset.ndarray("u1", offset=3)
        assert raw.shape == (24 * 8 - 3,)  # unaligned offsets are fine
        # No copy: every array points into the one mapping of the memfd.
        start, end = mapping_range(os.fstat(asset.fd).st_ino)
        for array in (whole, grid, tail, raw):
            assert start <= array.ctypes.data < end
        assert grid.ctypes.data == whole.ctypes.data == start
        assert asset.ndarray("<f8", shape=(0, 5), offset=24 * 8).size == 0


@pytest.mark.parametrize(
    "dtype, shape, offset, message",
    [
        ("<f8", (25,), 0, "needs 200 bytes"),
        ("<f8", None, 4, "not a whole number"),
        ("<f8", (2,), 24 * 8 + 1, "outside"),
        ("<f8", (2,), -1, "outside"),
        ("<f8", (-1, 4), 0, "negative"),
        ("<f8", (2.0,), 0, "integers"),
        ("<f8", None, 1.5, "not an integer"),
        (object, None, 0, "Python objects"),
        ([("a", "u1"), ("b", "O")], None, 0, "Python objects"),
        ("V0", None, 0, "no size"),
        ("no-such-dtype", None, 0, "not a numpy dtype"),
    ],
)
def test_ndarray_checks_dtype_shape_and_offset(
    client: memseal.Client, dtype: object, shape: object, offset: object, message: str
) -> None:
    with numbers(client, count=24) as asset:
        with pytest.raises(memseal.LayoutError, match=message):
            asset.ndarray(dtype, shape, offset)  # type: ignore[arg-type]


def test_views_outlive_the_asset_and_the_client(daemon: object, client: memseal.Client) -> None:
    asset = numbers(client)
    inode = os.fstat(asset.fd).st_ino
    array = asset.ndarray("<f8", shape=(32, 32))
    view = asset.view[8:16]
    asset.close()  # never raises, never unmaps under the views
    client.close()
    del asset
    gc.collect()
    assert array[31, 31] == 1023.0 and bytes(view) == np.float64(1).tobytes()
    assert mapped_inode(inode) == 1
    # The mapping goes with the last view, and no descriptor is left.
    del array
    gc.collect()
    assert mapped_inode(inode) == 1
    del view
    gc.collect()
    assert mapped_inode(inode) == 0
    assert open_fds_of(inode) == 0


def test_closing_without_views_unmaps_at_once(client: memseal.Client) -> None:
    asset = numbers(client)
    inode = os.fstat(asset.fd).st_ino
    assert mapped_inode(inode) == 1
    asset.close()
    assert (mapped_inode(inode), open_fds_of(inode)) == (0, 0)
    with pytest.raises(memseal.ClosedError):
        asset.view
    asset.close()  # twice is fine


def test_an_abandoned_asset_closes_its_descriptor(client: memseal.Client) -> None:
    asset = numbers(client)
    inode = os.fstat(asset.fd).st_ino
    array = asset.ndarray("<f8")
    del asset
    gc.collect()
    assert open_fds_of(inode) == 1  # the mapping's own, while the array lives
    del array
    gc.collect()
    assert (mapped_inode(inode), open_fds_of(inode)) == (0, 0)


def test_no_crash_when_views_die_after_everything_else(default_socket: object) -> None:
    # In a child, so that a segfault would show as a signal, not take pytest down.
    script = """
import gc, memseal
client = memseal.Client()
client.publish_bytes("t/late", bytes(range(256)) * 4096)
asset = client.fetch("t/late")
arrays = [asset.ndarray("u1", shape=(4096, 256))[i] for i in range(0, 4096, 512)]
views = [asset.view[i:i + 7] for i in range(0, 1 << 20, 1 << 17)]
asset.close(); client.close(); del asset, client; gc.collect()
print(sum(int(a[255]) for a in arrays), sum(len(bytes(v)) for v in views))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(255 * 8), str(7 * 8)]


def test_map_sealed_checks_a_descriptor_from_anywhere() -> None:
    fd = memseal.sealed_memfd(b"inherited bytes")
    with memseal.map_sealed(os.dup(fd)) as sealed:
        assert bytes(sealed) == b"inherited bytes"
    os.close(fd)
    plain = os.memfd_create("plain", os.MFD_CLOEXEC)
    os.write(plain, b"writable")
    inode = os.fstat(plain).st_ino
    with pytest.raises(memseal.VerifyError, match="lacks SHRINK|GROW|WRITE"):
        memseal.map_sealed(plain)  # closes it
    assert open_fds_of(inode) == 0
