"""Client.fetch_many and the version-2 greeting, against the real daemon.

How many items one request may name is the daemon's to say: 64 at most,
fewer when its descriptor limit, shared by --max-connections, leaves each
connection less room (``Daemon(descriptor_limit=...)`` sets it). The trace
callback shows which requests went out.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
import re
from pathlib import Path
from typing import Callable, List, Tuple

import pytest

import memseal
from daemon import Daemon
from procinfo import open_descriptors
from test_client import pattern

#: Request variant indices (PROTOCOL.md section 6.1), the sixth byte of a frame.
FETCH, FETCH_MANY = 2, 8


class Requests:
    """A trace callback that keeps the requests sent: (variant, frame)."""

    def __init__(self) -> None:
        self.sent: List[Tuple[int, bytes]] = []

    def __call__(self, direction: str, frame: bytes, fd_count: int) -> None:
        if direction == "send":
            self.sent.append((frame[5], frame))

    def kinds(self) -> List[int]:
        return [variant for variant, _ in self.sent]

    def batch_sizes(self) -> List[int]:
        """The item count of every FetchMany sent (one-byte varints here)."""
        return [frame[6] for variant, frame in self.sent if variant == FETCH_MANY]


def publish_shards(client: memseal.Client, count: int) -> List[Tuple[str, bytes]]:
    shards = [("model/shard-%02d" % i, pattern(4096 + 517 * i, i)) for i in range(count)]
    shards.append(("model/empty", b""))
    for name, data in shards:
        client.publish_bytes(name, data)
    return shards


def assets_of(results: List[memseal.FetchResult]) -> List[memseal.Asset]:
    assert all(isinstance(r, memseal.Asset) for r in results), results
    return [r for r in results if isinstance(r, memseal.Asset)]


def test_the_greeting_announces_the_session_read_only() -> None:
    with Daemon(["--max-connections", "64"]) as daemon, memseal.Client(str(daemon.socket)) as client:
        assert client.protocol_version == 2
        assert client.session == memseal.SessionLimits(max_unread_descriptors=64, max_fetch_many=64)
        with pytest.raises(AttributeError):
            client.session = None  # type: ignore[misc]
        with pytest.raises(dataclasses.FrozenInstanceError):
            client.session.max_fetch_many = 1000  # type: ignore[misc, union-attr]
        assert client.limits.max_frame_len == memseal.MAX_FRAME_LEN


def test_sixty_four_assets_in_one_round_trip_are_what_single_fetches_give() -> None:
    requests = Requests()
    with Daemon(["--max-connections", "64"]) as daemon, memseal.Client(str(daemon.socket), trace=requests) as client:
        shards = publish_shards(client, 63)  # and the empty one: 64
        requests.sent.clear()
        batch = assets_of(client.fetch_many([name for name, _ in shards]))
        assert requests.kinds() == [FETCH_MANY] and requests.batch_sizes() == [64]
        for (name, data), asset in zip(shards, batch):
            with client.fetch(name) as alone:
                assert asset.info == alone.info and asset.info.name == name
                assert asset.view == alone.view == data
                # The same blob, behind a descriptor checked the same way.
                assert os.fstat(asset.fd).st_ino == os.fstat(alone.fd).st_ino
                seals = fcntl.fcntl(asset.fd, fcntl.F_GET_SEALS)
                assert seals & memseal.IMMUTABLE_SEALS == memseal.IMMUTABLE_SEALS
            with pytest.raises(TypeError):
                asset.view[0:1] = b"x"
            asset.close()


def test_items_fail_alone_and_the_connection_stays() -> None:
    with Daemon(["--max-connections", "64"]) as daemon, memseal.Client(str(daemon.socket)) as client:
        client.publish_bytes("m/a", b"alpha")
        client.publish_bytes("m/b", b"beta")
        results = client.fetch_many(["m/a", "m/missing", "../bad", "m/b", ("m/a", 99)])
        assert [type(r) for r in results] == [
            memseal.Asset,
            memseal.ServerError,
            memseal.ServerError,
            memseal.Asset,
            memseal.ServerError,
        ]
        first, missing, bad, second, no_version = results
        assert isinstance(first, memseal.Asset) and bytes(first) == b"alpha"
        assert isinstance(second, memseal.Asset) and bytes(second) == b"beta"
        codes = [getattr(e, "code") for e in (missing, bad, no_version)]
        assert codes == [memseal.ErrorCode.NOT_FOUND, memseal.ErrorCode.INVALID_NAME, memseal.ErrorCode.NOT_FOUND]
        assert "m/missing" in str(missing)
        # The error of an item is the one a single fetch of it raises.
        with pytest.raises(memseal.ServerError) as alone:
            client.fetch("m/missing")
        assert isinstance(missing, memseal.ServerError) and alone.value.code == missing.code
        with pytest.raises(memseal.ServerError):
            raise missing
        assert bytes(client.fetch("m/b")) == b"beta"
        assert client.fetch_many([]) == []


def test_more_items_than_the_session_allows_go_in_several_requests() -> None:
    requests = Requests()
    with Daemon(["--max-connections", "64"], descriptor_limit=512) as daemon, memseal.Client(
        str(daemon.socket), trace=requests
    ) as client:
        assert client.session == memseal.SessionLimits(max_unread_descriptors=4, max_fetch_many=4)
        shards = publish_shards(client, 9)  # 10 with the empty one
        requests.sent.clear()
        names = [name for name, _ in shards] + ["model/missing"]
        results = client.fetch_many(names)
        assert requests.kinds() == [FETCH_MANY] * 3 and requests.batch_sizes() == [4, 4, 3]
        assert [bytes(a) for a in assets_of(results[:10])] == [data for _, data in shards]
        assert isinstance(results[10], memseal.ServerError) and results[10].code == memseal.ErrorCode.NOT_FOUND


def test_a_daemon_with_room_for_one_item_gets_single_fetches() -> None:
    requests = Requests()
    with Daemon(["--max-connections", "64"], descriptor_limit=128) as daemon, memseal.Client(
        str(daemon.socket), trace=requests
    ) as client:
        assert client.session is not None and client.session.max_fetch_many == 1
        shards = publish_shards(client, 2)
        requests.sent.clear()
        results = client.fetch_many([name for name, _ in shards] + ["model/missing"])
        assert requests.kinds() == [FETCH] * 4
        assert [bytes(a) for a in assets_of(results[:3])] == [data for _, data in shards]
        assert isinstance(results[3], memseal.ServerError) and results[3].code == memseal.ErrorCode.NOT_FOUND


def test_versions_and_hashes_select_as_in_fetch() -> None:
    requests = Requests()
    with Daemon(["--keep-versions", "3"]) as daemon, memseal.Client(str(daemon.socket), trace=requests) as client:
        one, two, three = (client.publish_bytes("v/n", data) for data in (b"one", b"two", b"three"))
        results = client.fetch_many(
            [
                ("v/n", 1),
                ("v/n", two.hash),
                ("v/n", three.hash_hex),
                ("v/n", None),
                "v/n",
                ("v/n", 7),
                ("v/n", bytes(32)),
            ]
        )
        found = assets_of(results[:5])
        assert [a.info for a in found] == [one, two, three, three, three]
        assert [bytes(a) for a in found] == [b"one", b"two", b"three", b"three", b"three"]
        assert [getattr(e, "code") for e in results[5:]] == [memseal.ErrorCode.NOT_FOUND] * 2
        # An item that cannot be asked for is refused before anything is sent.
        requests.sent.clear()
        bad: List[Callable[[], object]] = [
            lambda: client.fetch_many(["v/n", ("v/n", True)]),  # a bool is an int, but no version
            lambda: client.fetch_many(["v/n", ("v/n", 1.5)]),  # type: ignore[list-item]
            lambda: client.fetch_many(["v/n", ("v/n",)]),  # type: ignore[list-item]
            lambda: client.fetch_many(["v/n", 7]),  # type: ignore[list-item]
        ]
        for call in bad:
            with pytest.raises(TypeError):
                call()
        for wrong in (("v/n", b"short"), ("v/n", "zz" * 32), ("v/n", -1), "x" * memseal.MAX_FRAME_LEN):
            with pytest.raises(ValueError):
                client.fetch_many(["v/n", wrong])
        assert requests.sent == []
        assert bytes(client.fetch("v/n", version=2)) == b"two"


def test_no_descriptor_stays_open_after_failed_items(daemon: Daemon) -> None:
    with memseal.Client(str(daemon.socket)) as client:
        client.publish_bytes("f/a", b"a")
        client.publish_bytes("f/b", b"bb")
        before = open_descriptors()
        for _ in range(20):
            results = client.fetch_many(["f/a", "f/none", "f//bad", "f/b", ("f/b", 5)] * 3)
            assert sum(isinstance(r, memseal.Asset) for r in results) == 6
            for result in results:
                if isinstance(result, memseal.Asset):
                    result.close()
        assert open_descriptors() == before


def test_the_readme_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("\n### Many assets in one round trip\n", 1)[1]
    example = re.findall(r"```python\n(.*?)```", section, re.S)[0]
    with Daemon(["--keep-versions", "3"]) as daemon, memseal.Client(str(daemon.socket)) as client:
        for i in range(16):
            client.publish_bytes("models/en/%02d" % i, b"shard %d" % i)
        for version in range(1, 4):
            client.publish_bytes("models/en/config", b"config %d" % version)
        client.publish_bytes("models/en/vocab", b"words")
        exec(example, {"client": client, "memseal": memseal})
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == ["models/en/00 1 7", "models/en/01 1 7"] and len(lines) == 18
    assert lines[-2:] == ["models/en/config 3 8", "models/en/vocab 1 5"]
