"""memseal.safetensors against the reference implementation, and against
headers written to break it."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np
import pytest
import safetensors
import safetensors.numpy

import memseal
import memseal.safetensors as mst
from procinfo import mapping_rss_kib, memfds_open

#: Every dtype of the format that numpy has, by its safetensors name.
NUMPY_DTYPES = {name: dtype for name, (_, dtype) in mst.DTYPES.items() if dtype is not None}


def sample(dtype: str, shape: Tuple[int, ...], seed: int) -> Any:
    """Random values of a dtype, bit patterns included (NaNs, odd bools excluded)."""
    rng = np.random.default_rng(seed)
    dt = np.dtype(NUMPY_DTYPES[dtype])
    if dt.kind == "b":
        return rng.integers(0, 2, size=shape).astype(dt)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        return rng.integers(info.min, info.max, size=shape, dtype=dt, endpoint=True)
    if dt.kind == "c":
        return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dt)
    return (rng.standard_normal(shape) * 1000).astype(dt)


def every_dtype() -> Dict[str, Any]:
    tensors: Dict[str, Any] = {}
    for i, name in enumerate(sorted(NUMPY_DTYPES)):
        tensors["layer.%d.%s" % (i, name.lower())] = sample(name, (3, 5, 7), i)
        tensors["scalar.%s" % name.lower()] = np.asarray(sample(name, (), 100 + i))
    tensors["empty.f32"] = np.zeros((0, 4), np.float32)
    return tensors


def publish_model(client: memseal.Client, tmp_path: Path, tensors: Dict[str, Any], **kwargs: Any) -> Path:
    path = tmp_path / "model.safetensors"
    safetensors.numpy.save_file(tensors, str(path), **kwargs)
    client.publish_file("models/test", str(path))
    return path


def test_the_test_covers_every_numpy_dtype_of_the_format() -> None:
    assert sorted(NUMPY_DTYPES) == sorted(
        ["BOOL", "U8", "I8", "I16", "U16", "F16", "I32", "U32", "F32", "C64", "F64", "I64", "U64"]
    )


def test_load_equals_the_reference_for_every_numpy_dtype(client: memseal.Client, tmp_path: Path) -> None:
    path = publish_model(client, tmp_path, every_dtype())
    reference = safetensors.numpy.load_file(str(path))
    loaded = mst.load("models/test", client)
    assert sorted(loaded) == sorted(reference)
    for name, expected in reference.items():
        got = loaded[name]
        assert got.dtype == expected.dtype and got.shape == expected.shape, name
        assert got.tobytes() == expected.tobytes(), name
        assert not got.flags.writeable, name


def test_tensors_are_views_of_one_sealed_mapping(client: memseal.Client, tmp_path: Path) -> None:
    publish_model(client, tmp_path, every_dtype())
    tensors = mst.open("models/test", client)
    inode = tensors.sealed.fd and __import__("os").fstat(tensors.sealed.fd).st_ino
    arrays = tensors.load()
    tensors.close()
    with open("/proc/self/maps") as maps:
        (line,) = [m.split() for m in maps if m.split()[4:5] == [str(inode)]]
    start, end = (int(x, 16) for x in line[0].split("-"))
    for name, array in arrays.items():
        if array.size:
            assert start <= array.ctypes.data < end, name
        with pytest.raises(ValueError):
            array[...] = 0


def test_open_is_lazy_and_gives_the_metadata(client: memseal.Client, tmp_path: Path) -> None:
    big = {"w%d" % i: np.full((256, 1024), i, np.float32) for i in range(16)}  # 16 MiB
    publish_model(client, tmp_path, big, metadata={"format": "np", "author": "tests"})
    with mst.open("models/test", client) as tensors:
        inode = __import__("os").fstat(tensors.sealed.fd).st_ino
        assert tensors.keys() == sorted(big)  # the order of their bytes
        assert len(tensors) == 16 and "w3" in tensors and "nope" not in tensors
        assert tensors.metadata() == {"format": "np", "author": "tests"}
        assert tensors.info("w3").shape == (256, 1024) and tensors.info("w3").dtype == "F32"
        # Only the header's pages have been read so far (the kernel maps
        # up to 64 KiB around each fault), not the 16 MiB of tensors.
        assert mapping_rss_kib(inode) <= 64
        w7 = tensors.get_tensor("w7")
        assert float(w7[255, 1023]) == 7.0 and float(tensors["w2"][0, 0]) == 2.0
        assert mapping_rss_kib(inode) <= 3 * 64
        with pytest.raises(KeyError):
            tensors.get_tensor("nope")
    assert float(w7.sum()) == 7.0 * 256 * 1024
    with pytest.raises(memseal.ClosedError):
        tensors.get_tensor("w1")


def test_a_file_without_metadata_has_none(client: memseal.Client, tmp_path: Path) -> None:
    publish_model(client, tmp_path, {"a": np.ones(3, np.int8)})
    with mst.open("models/test", client) as tensors:
        assert tensors.metadata() is None


def test_load_and_open_find_the_daemon_on_their_own(default_socket: object, tmp_path: Path) -> None:
    with memseal.Client() as client:
        first = publish_model(client, tmp_path, {"x": np.arange(4, dtype=np.int64)})
        version_one = client.stat("models/test")
        first.unlink()
        publish_model(client, tmp_path, {"x": np.arange(5, dtype=np.int64)})
    assert mst.load("models/test")["x"].tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(memseal.ServerError):  # keep_versions is 1: version 1 is gone
        mst.load("models/test", version=version_one.version)
    with mst.open("models/test", hash=memseal.Client().stat("models/test").hash) as tensors:
        assert tensors["x"].shape == (5,)


def header_bytes(header: Any, data: bytes = b"", raw: bytes = b"") -> bytes:
    text = raw or json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


def test_dtypes_numpy_lacks_are_checked_and_given_as_bytes(client: memseal.Client) -> None:
    header = {
        "bf": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [0, 8]},
        "f4": {"dtype": "F4", "shape": [6], "data_offsets": [8, 11]},
        "f8": {"dtype": "F8_E4M3", "shape": [1], "data_offsets": [11, 12]},
        "i": {"dtype": "I32", "shape": [1], "data_offsets": [12, 16]},
    }
    blob = header_bytes(header, bytes(range(16)))
    safetensors.deserialize(blob)  # the reference accepts it too
    client.publish_bytes("models/bf16", blob)
    with mst.open("models/bf16", client) as tensors:
        assert bytes(tensors.raw("bf")) == bytes(range(8))
        assert bytes(tensors.raw("f4")) == bytes([8, 9, 10])
        assert tensors.get_tensor("i").tolist() == [int.from_bytes(bytes(range(12, 16)), "little")]
        with pytest.raises(memseal.LayoutError, match="BF16, which numpy has no type for"):
            tensors.get_tensor("bf")
    with pytest.raises(memseal.LayoutError):
        mst.load("models/bf16", client)


def t(dtype: str, shape: List[Any], begin: Any, end: Any) -> Dict[str, Any]:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


#: (what, file bytes, words of the error, does the reference refuse it too)
HOSTILE: List[Tuple[str, bytes, str, bool]] = [
    ("shorter than the length", b"\x10\x00\x00", "too few", True),
    ("length past the end", struct.pack("<Q", 1000) + b'{"a": 1}', "holds only", True),
    ("huge length", struct.pack("<Q", 1 << 62) + b"{}", "above the", True),
    ("not UTF-8", header_bytes(None, raw=b'{"\xff": 1}'), "not UTF-8", True),
    ("not JSON", header_bytes(None, raw=b"{this is not json"), "not JSON", True),
    ("NaN", header_bytes(None, raw=b'{"a": NaN}'), "not JSON", True),
    ("nested too deep", header_bytes(None, raw=b"[" * 100_000 + b"]" * 100_000), "not JSON", True),
    ("an array", header_bytes([1, 2]), "not a JSON object", True),
    ("entry not an object", header_bytes({"a": 5}), "not an object", True),
    ("no dtype", header_bytes({"a": {"shape": [1], "data_offsets": [0, 1]}}, b"x"), "no 'dtype'", True),
    ("unknown dtype", header_bytes({"a": t("F33", [1], 0, 4)}, b"xxxx"), "does not define", True),
    ("dtype not a string", header_bytes({"a": t(7, [1], 0, 4)}, b"xxxx"), "does not define", True),  # type: ignore[arg-type]
    ("shape not a list", header_bytes({"a": t("U8", 4, 0, 4)}, b"xxxx"), "not a list", True),  # type: ignore[arg-type]
    ("negative dimension", header_bytes({"a": t("U8", [-4], 0, 4)}, b"xxxx"), "integer from 0", True),
    ("float dimension", header_bytes({"a": t("U8", [4.0], 0, 4)}, b"xxxx"), "integer from 0", True),
    ("boolean dimension", header_bytes({"a": t("U8", [True], 0, 1)}, b"x"), "integer from 0", True),
    ("dimension past 64 bits", header_bytes({"a": t("U8", [1 << 64], 0, 1)}, b"x"), "integer from 0", True),
    ("three offsets", header_bytes({"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1, 2]}}, b"x"), "[begin, end]", True),
    ("ends before it begins", header_bytes({"a": t("U8", [0], 4, 0)}, b"xxxx"), "before it begins", True),
    ("shape and size disagree", header_bytes({"a": t("F32", [2, 2], 0, 12)}, b"x" * 12), "needs 16 bytes", True),
    ("hostile shape", header_bytes({"a": t("U8", [1 << 63, 1 << 63, 1 << 63], 0, 1)}, b"x"), "its data_offsets span 1", True),
    ("half a byte", header_bytes({"a": t("F4", [3], 0, 2)}, b"xx"), "byte boundary", True),
    ("offsets past the end", header_bytes({"a": t("U8", [8], 0, 8)}, b"xxxx"), "past the 4 bytes", True),
    (
        "overlapping tensors",
        header_bytes({"a": t("U8", [4], 0, 4), "b": t("U8", [4], 2, 6)}, b"x" * 6),
        "overlaps tensor 'a'",
        True,
    ),
    ("a gap", header_bytes({"a": t("U8", [2], 0, 2), "b": t("U8", [2], 4, 6)}, b"x" * 6), "bytes 2..4", True),
    ("bytes after the last tensor", header_bytes({"a": t("U8", [2], 0, 2)}, b"x" * 6), "bytes 2..6", True),
    ("duplicate names", header_bytes(None, raw=b'{"a": 1, "a": 2}'), "names 'a' twice", False),
    ("metadata of numbers", header_bytes({"__metadata__": {"k": 1}}), "strings to strings", True),
]


@pytest.mark.parametrize("what, blob, words, reference_refuses", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_headers_are_refused(
    client: memseal.Client, what: str, blob: bytes, words: str, reference_refuses: bool
) -> None:
    client.publish_bytes("models/hostile", blob)
    before = memfds_open()
    with pytest.raises(memseal.HeaderError) as refused:
        mst.load("models/hostile", client)
    assert words in str(refused.value), str(refused.value)
    with pytest.raises(memseal.HeaderError):
        mst.open("models/hostile", client)
    assert memfds_open() == before  # the refused asset was closed
    if reference_refuses:
        with pytest.raises(Exception):
            safetensors.deserialize(blob)
