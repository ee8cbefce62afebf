"""Every operation of the client, round trip through the real daemon."""

from __future__ import annotations

import hashlib
import io
import os
import threading
from pathlib import Path
from typing import List

import pytest

import memseal
from daemon import Daemon


def pattern(size: int, seed: int) -> bytes:
    """Bytes that differ at every position for different seeds."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(b"%d:%d" % (seed, counter)).digest()
        counter += 1
    return bytes(out[:size])


def test_publish_bytes_then_fetch_returns_the_same_bytes(client: memseal.Client) -> None:
    data = pattern(300_000, 1)
    info = client.publish_bytes("py/blob", data)
    assert (info.name, info.version, info.size) == ("py/blob", 1, len(data))
    assert len(info.hash_hex) == 64
    with client.fetch("py/blob") as asset:
        assert asset.info == info
        assert len(asset) == len(data)
        assert asset.view == data
        assert bytes(asset) == data
    assert client.server.startswith("memseald ")
    assert client.limits.max_frame_len == memseal.MAX_FRAME_LEN


def test_an_empty_asset_is_an_empty_view(client: memseal.Client) -> None:
    client.publish_bytes("py/empty", b"")
    with client.fetch("py/empty") as asset:
        assert len(asset) == 0 and bytes(asset) == b""
        assert asset.ndarray("u1").shape == (0,)


def test_every_publish_source_gives_the_same_asset(client: memseal.Client, tmp_path: Path) -> None:
    data = pattern(70_000, 2)
    path = tmp_path / "input.bin"
    path.write_bytes(data)
    infos = [client.publish_bytes("py/stream", data)]
    infos.append(client.publish_reader("py/reader", io.BytesIO(data), len(data)))
    infos.append(client.publish_file("py/path", str(path)))
    with open(path, "rb") as f:
        infos.append(client.publish_file("py/file", f))
    memfd = memseal.sealed_memfd(data)
    try:
        infos.append(client.publish_sealed("py/sealed", memfd))
        infos.append(client.publish_fd("py/fd", memfd))
    finally:
        os.close(memfd)
    assert len({info.hash for info in infos}) == 1
    for info in infos:
        with client.fetch(info.name) as asset:
            assert asset.view == data, info.name


def test_publish_sealed_refuses_an_unsealed_memfd_without_asking(client: memseal.Client) -> None:
    fd = os.memfd_create("unsealed", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.write(fd, b"changeable")
        with pytest.raises(memseal.VerifyError, match="lacks"):
            client.publish_sealed("py/unsealed", fd)
    finally:
        os.close(fd)
    assert client.list("py/") == []  # and the connection still works


def test_a_reader_that_ends_early_publishes_nothing(daemon: Daemon) -> None:
    client = memseal.Client(str(daemon.socket))
    with pytest.raises(memseal.MemsealError, match="ended after 3 of 10 bytes"):
        client.publish_reader("py/short", io.BytesIO(b"abc"), 10)
    with memseal.Client(str(daemon.socket)) as other:
        with pytest.raises(memseal.ServerError) as refused:
            other.stat("py/short")
    assert refused.value.code == memseal.ErrorCode.NOT_FOUND


def test_fetch_and_stat_by_version_and_hash() -> None:
    with Daemon(["--keep-versions", "3"]) as daemon, memseal.Client(str(daemon.socket)) as client:
        first = client.publish_bytes("py/v", b"one")
        second = client.publish_bytes("py/v", b"two")
        assert (first.version, second.version) == (1, 2)
        assert client.stat("py/v") == second
        assert client.stat("py/v", version=1) == first
        assert client.stat("py/v", hash=first.hash) == first
        assert client.stat("py/v", hash=first.hash_hex) == first
        with client.fetch("py/v", version=1) as asset:
            assert bytes(asset) == b"one"
        with client.fetch("py/v", hash=second.hash_hex) as asset:
            assert bytes(asset) == b"two"
        with pytest.raises(ValueError, match="not both"):
            client.fetch("py/v", version=1, hash=first.hash)
        with pytest.raises(ValueError, match="32 bytes"):
            client.stat("py/v", hash=b"short")
        assert client.remove("py/v", version=1) == 1
        assert [a.version for a in client.list("py/")] == [2]
        assert client.remove("py/v") == 1
        assert client.list("py/") == []


def test_list_follows_every_page_and_status_counts(client: memseal.Client) -> None:
    for i in range(300):
        client.publish_bytes("many/%03d" % i, b"%d" % i)
    client.publish_bytes("other/x", b"x")
    names = [a.name for a in client.list("many/")]
    assert names == ["many/%03d" % i for i in range(300)]
    assert len(client.list()) == 301
    status = client.status()
    assert (status.names, status.versions) == (301, 301) and status.connections >= 1


def test_errors_carry_the_daemon_codes_and_keep_the_connection() -> None:
    with Daemon(["--max-asset-size", "1K"]) as daemon, memseal.Client(str(daemon.socket)) as client:
        cases = [
            (lambda: client.fetch("no/such"), memseal.ErrorCode.NOT_FOUND),
            (lambda: client.stat("no/such", version=9), memseal.ErrorCode.NOT_FOUND),
            (lambda: client.remove("no/such"), memseal.ErrorCode.NOT_FOUND),
            (lambda: client.publish_bytes("a/../b", b"x"), memseal.ErrorCode.INVALID_NAME),
            (lambda: client.list("/abs"), memseal.ErrorCode.INVALID_NAME),
            (lambda: client.publish_bytes("big", b"x" * 2048), memseal.ErrorCode.TOO_LARGE),
        ]
        for call, code in cases:
            with pytest.raises(memseal.ServerError) as error:
                call()
            assert error.value.code == code and error.value.message
            assert not error.value.closes_connection
        client.publish_bytes("small", b"fits")
        assert client.fetch("small").info.version == 1


def test_a_busy_daemon_says_so() -> None:
    with Daemon(["--max-connections", "1"]) as daemon:
        holder = None
        for _ in range(100):  # the launcher's probe may hold the slot a moment
            try:
                holder = memseal.Client(str(daemon.socket))
                break
            except memseal.ServerError:
                threading.Event().wait(0.05)
        assert holder is not None
        with pytest.raises(memseal.ServerError) as error:
            memseal.Client(str(daemon.socket))
        assert error.value.code == memseal.ErrorCode.BUSY and error.value.closes_connection
        holder.close()


def test_a_daemon_of_another_uid_is_refused_before_a_byte_is_sent(daemon: Daemon) -> None:
    sent: List[bytes] = []
    with pytest.raises(memseal.PeerRejected) as error:
        memseal.Client(str(daemon.socket), expect_server_uid=os.geteuid() + 1, trace=lambda d, f, n: sent.append(f))
    assert error.value.uid == os.geteuid() and sent == []
    assert str(daemon.socket) in str(error.value)


def test_a_missing_socket_is_a_connect_error(tmp_path: Path) -> None:
    with pytest.raises(memseal.ConnectError) as error:
        memseal.Client(str(tmp_path / "nothing.sock"))
    assert "the socket the caller named" in str(error.value)


def test_watch_sees_changes_in_order(daemon: Daemon, client: memseal.Client) -> None:
    watcher = memseal.Client(str(daemon.socket))
    events = watcher.watch("w/")
    client.publish_bytes("w/a", b"1")
    client.publish_bytes("other/x", b"not watched")
    client.publish_bytes("w/a", b"22")
    client.remove("w/a")
    seen = [(e.kind, e.info.name, e.info.version, e.info.size) for e in (next(events) for _ in range(4))]
    assert seen == [
        ("published", "w/a", 1, 1),
        ("published", "w/a", 2, 2),
        ("removed", "w/a", 1, 1),
        ("removed", "w/a", 2, 2),
    ]
    with pytest.raises(memseal.ProtocolError, match="watching"):
        watcher.status()
    watcher.close()


def test_fd_variable_follows_the_convention() -> None:
    assert memseal.fd_variable("models/en.bin") == "MEMSEAL_FD_MODELS_EN_BIN"
