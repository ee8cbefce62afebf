"""fetch_many against peers that do what memseald never does (scripted.py):
a daemon that speaks only protocol version 1, and batch answers whose
descriptors do not add up. Whatever the peer sends, every descriptor the
client received is closed unless it handed it out in an Asset:
/proc/self/fd is the same before and after.
"""

from __future__ import annotations

import socket
from contextlib import contextmanager
from typing import Callable, Iterator, List, Optional, Sequence

import pytest

import memseal
import scripted
from procinfo import open_descriptors
from scripted import ScriptedDaemon, Serve


@contextmanager
def run(script: Sequence[Serve], trace: Optional[Callable[[str, bytes, int], None]] = None) -> Iterator[memseal.Client]:
    """Start the peer, measure the descriptors, hand out a client; after
    the test, check that nothing stayed open but what was there before."""
    peer = ScriptedDaemon(script)
    before = open_descriptors()
    client = memseal.Client(str(peer.socket), trace=trace)
    try:
        yield client
    finally:
        client.close()
        peer.finish()
    leaked = {fd: what for fd, what in open_descriptors().items() if before.get(fd) != what}
    assert leaked == {}, "descriptors left open: %s" % leaked


def greeted(max_fetch_many: int, then: Serve) -> Serve:
    """A version-2 greeting announcing ``max_fetch_many``, then ``then``;
    afterwards the peer waits for the client to close."""

    def serve(conn: socket.socket) -> None:
        assert scripted.hello_version(conn) == 2
        scripted.send(conn, scripted.frame(scripted.greeting(max_fetch_many), 0))
        then(conn)
        scripted.wait_for_close(conn)

    return serve


def test_a_version_1_daemon_is_greeted_again_and_batches_become_fetches() -> None:
    def refuse_version_2(conn: socket.socket) -> None:
        assert scripted.hello_version(conn) == 2
        message = scripted.error(memseal.ErrorCode.UNSUPPORTED_VERSION, "this daemon speaks version 1")
        scripted.send(conn, scripted.frame(message, 0))

    def version_1(conn: socket.socket) -> None:
        assert scripted.hello_version(conn) == 1
        scripted.send(conn, scripted.frame(scripted.welcome(), 0))
        while True:
            name = scripted.fetch_name(conn)
            if name is None:
                return
            if name == "missing":
                scripted.send(conn, scripted.frame(scripted.error(memseal.ErrorCode.NOT_FOUND, "no such name"), 0))
            else:
                data = name.encode()
                scripted.send(conn, scripted.frame(scripted.asset(name, len(data)), 1), [scripted.memfd(data)])

    with run([refuse_version_2, version_1]) as client:
        assert client.protocol_version == 1 and client.session is None
        assert client.server == "scripted 1"
        results = client.fetch_many(["a", "missing", ("bb", None)])
        a, missing, bb = results
        assert isinstance(a, memseal.Asset) and bytes(a) == b"a"
        assert isinstance(missing, memseal.ServerError) and missing.code == memseal.ErrorCode.NOT_FOUND
        assert isinstance(bb, memseal.Asset) and bytes(bb) == b"bb"
        a.close()
        bb.close()


def test_a_welcome_in_answer_to_version_2_means_version_1() -> None:
    """As the Rust library does: a daemon may answer a version-2 hello with
    a version-1 Welcome; the connection is then of version 1, no batches."""

    def welcome_anyway(conn: socket.socket) -> None:
        assert scripted.hello_version(conn) == 2
        scripted.send(conn, scripted.frame(scripted.welcome(), 0))
        assert scripted.fetch_name(conn) == "only"
        scripted.send(conn, scripted.frame(scripted.error(memseal.ErrorCode.NOT_FOUND, "no"), 0))
        scripted.wait_for_close(conn)

    with run([welcome_anyway]) as client:
        assert client.protocol_version == 1 and client.session is None
        (missing,) = client.fetch_many(["only"])
        assert isinstance(missing, memseal.ServerError) and missing.code == memseal.ErrorCode.NOT_FOUND


def test_a_daemon_that_refuses_version_1_too_is_an_error() -> None:
    def refuse(conn: socket.socket) -> None:
        scripted.hello_version(conn)
        scripted.send(conn, scripted.frame(scripted.error(memseal.ErrorCode.UNSUPPORTED_VERSION, "no"), 0))

    peer = ScriptedDaemon([refuse, refuse])
    with pytest.raises(memseal.ServerError) as refused:
        memseal.Client(str(peer.socket))
    assert refused.value.code == memseal.ErrorCode.UNSUPPORTED_VERSION
    peer.finish()


def test_a_greeting_that_claims_version_1_is_refused() -> None:
    def lie(conn: socket.socket) -> None:
        scripted.hello_version(conn)
        scripted.send(conn, scripted.frame(scripted.greeting(8, version=1), 0))

    peer = ScriptedDaemon([lie])
    with pytest.raises(memseal.ProtocolError, match="'greeting' of protocol version 1"):
        memseal.Client(str(peer.socket))
    peer.finish()


def test_an_unsealed_descriptor_fails_its_item_alone() -> None:
    def answer(conn: socket.socket) -> None:
        assert scripted.fetch_many_count(conn) == 3
        message = scripted.assets([("good", 4), ("forged", 6), memseal.ErrorCode.NOT_FOUND])
        fds = [scripted.memfd(b"good"), scripted.memfd(b"forged", sealed=False)]
        scripted.send(conn, scripted.frame(message, 2), fds)

    with run([greeted(8, answer)]) as client:
        good, forged, missing = client.fetch_many(["good", "forged", "missing"])
        assert isinstance(good, memseal.Asset) and bytes(good) == b"good"
        assert isinstance(forged, memseal.VerifyError) and "lacks" in str(forged)
        assert isinstance(missing, memseal.ServerError)
        good.close()


def counted_wrong(conn: socket.socket) -> None:
    """Three descriptors, as the frame declares, for two assets."""
    scripted.fetch_many_count(conn)
    message = scripted.assets([("a", 1), ("b", 1)])
    scripted.send(conn, scripted.frame(message, 3), [scripted.memfd(b"a"), scripted.memfd(b"b"), scripted.memfd(b"c")])


def declared_wrong(conn: socket.socket) -> None:
    """Two assets and two descriptors, in a frame that declares one."""
    scripted.fetch_many_count(conn)
    message = scripted.assets([("a", 1), ("b", 1)])
    scripted.send(conn, scripted.frame(message, 1), [scripted.memfd(b"a"), scripted.memfd(b"b")])


def malformed(conn: socket.socket) -> None:
    """The descriptors arrive, the message after them is cut short."""
    scripted.fetch_many_count(conn)
    message = scripted.assets([("a", 1), ("b", 1)])[:-3]
    scripted.send(conn, scripted.frame(message, 2), [scripted.memfd(b"a"), scripted.memfd(b"b")])


def second_batch(conn: socket.socket) -> None:
    """Descriptors on the first byte, and more on a later byte of the same frame."""
    scripted.fetch_many_count(conn)
    whole = scripted.frame(scripted.assets([("a", 1), ("b", 1)]), 2)
    scripted.send(conn, whole[:10], [scripted.memfd(b"a")])
    scripted.send(conn, whole[10:], [scripted.memfd(b"b")])


def cut_short(conn: socket.socket) -> None:
    """The descriptors and half the frame, then the connection ends."""
    scripted.fetch_many_count(conn)
    whole = scripted.frame(scripted.assets([("a", 1), ("b", 1)]), 2)
    scripted.send(conn, whole[: len(whole) // 2], [scripted.memfd(b"a"), scripted.memfd(b"b")])
    conn.shutdown(socket.SHUT_WR)


def too_few_results(conn: socket.socket) -> None:
    """A well-formed answer for two items, to a batch of three."""
    scripted.fetch_many_count(conn)
    message = scripted.assets([("a", 1), ("b", 1)])
    scripted.send(conn, scripted.frame(message, 2), [scripted.memfd(b"a"), scripted.memfd(b"b")])


def another_asset(conn: socket.socket) -> None:
    """Three well-formed, sealed results; the second names another asset."""
    scripted.fetch_many_count(conn)
    message = scripted.assets([("a", 1), ("x", 1), ("c", 1)])
    scripted.send(conn, scripted.frame(message, 3), [scripted.memfd(b"a"), scripted.memfd(b"x"), scripted.memfd(b"c")])


@pytest.mark.parametrize(
    "answer, error",
    [
        (another_asset, "asked for 'b' \\(latest\\), the daemon answered with 'x'"),
        (counted_wrong, "carries 2 descriptor"),
        (declared_wrong, "declared 1 descriptor"),
        (malformed, "malformed reply"),
        (second_batch, "does not start a frame"),
        (cut_short, "in the middle of a frame"),
        (too_few_results, "2 result"),
    ],
)
def test_a_broken_batch_answer_closes_every_descriptor_and_the_connection(answer: Serve, error: str) -> None:
    with run([greeted(8, answer)]) as client:
        with pytest.raises(memseal.ProtocolError, match=error) as broken:
            client.fetch_many(["a", "b", "c"])
        with pytest.raises(memseal.ProtocolError, match="closed"):
            client.fetch("a")
    assert broken.traceback  # alive while run() looked for open descriptors


def test_assets_of_earlier_batches_are_closed_when_a_later_one_breaks() -> None:
    def good_then_broken(conn: socket.socket) -> None:
        assert scripted.fetch_many_count(conn) == 2
        message = scripted.assets([("a", 1), ("b", 1)])
        scripted.send(conn, scripted.frame(message, 2), [scripted.memfd(b"a"), scripted.memfd(b"b")])
        malformed(conn)

    with run([greeted(2, good_then_broken)]) as client:
        with pytest.raises(memseal.ProtocolError, match="malformed") as broken:
            client.fetch_many(["a", "b", "c", "d"])
        # run() finds no descriptor open even though the traceback, kept
        # alive here, still refers to the first batch's assets: they were
        # closed, not left to the garbage collector.
    assert broken.traceback


def refusing_each(batches: int, counts: List[int]) -> Serve:
    """Answer ``batches`` FetchMany requests, every item NOT_FOUND,
    noting how many items each named."""

    def serve(conn: socket.socket) -> None:
        for _ in range(batches):
            count = scripted.fetch_many_count(conn)
            counts.append(count)
            refusals = [memseal.ErrorCode.NOT_FOUND] * count
            scripted.send(conn, scripted.frame(scripted.assets(refusals), 0))

    return serve


def test_no_request_names_more_items_than_a_frame_carries_descriptors() -> None:
    """A daemon may announce any max_fetch_many; one frame carries at most
    253 descriptors, so no request names more items than that."""
    counts: List[int] = []
    with run([greeted(1000, refusing_each(2, counts))]) as client:
        results = client.fetch_many(["n/%d" % i for i in range(300)])
        assert len(results) == 300 and all(isinstance(r, memseal.ServerError) for r in results)
    assert counts == [253, 47]


def test_a_batch_too_long_for_one_frame_is_split() -> None:
    """253 items of 250-byte names pinned by hash would take 72 KB: each
    request is cut to fit the 64 KiB frame (284 bytes an item: 230 fit)."""
    counts: List[int] = []
    frames: List[int] = []

    def sizes(direction: str, frame: bytes, fd_count: int) -> None:
        frames.append(len(frame) - 4)

    with run([greeted(253, refusing_each(2, counts))], trace=sizes) as client:
        items = [("%03d" % i + "n" * 247, bytes(32)) for i in range(253)]
        assert len(client.fetch_many(items)) == 253
    assert counts == [230, 23]
    assert max(frames) <= memseal.MAX_FRAME_LEN


def test_a_fetch_answered_with_another_asset_is_a_protocol_error() -> None:
    """A single fetch answered with a sealed memfd of another name: the
    descriptor is closed, the connection too."""

    def answer(conn: socket.socket) -> None:
        assert scripted.fetch_name(conn) == "wanted"
        scripted.send(conn, scripted.frame(scripted.asset("other", 5), 1), [scripted.memfd(b"other")])

    with run([greeted(8, answer)]) as client:
        with pytest.raises(memseal.ProtocolError, match="answered with 'other'"):
            client.fetch("wanted")


def test_busy_in_answer_to_a_request_keeps_the_connection() -> None:
    """``Busy`` answering a request (no descriptor of its own for this
    reader right now) leaves the connection open (PROTOCOL.md 7.10): the
    next fetch on it is served. Only where it refuses a new connection or
    ends a watch does the daemon close."""

    def answer(conn: socket.socket) -> None:
        assert scripted.fetch_name(conn) == "wanted"
        scripted.send(conn, scripted.frame(scripted.error(memseal.ErrorCode.BUSY, "no descriptor right now"), 0))
        assert scripted.fetch_name(conn) == "wanted"
        scripted.send(conn, scripted.frame(scripted.asset("wanted", 5), 1), [scripted.memfd(b"bytes")])

    with run([greeted(8, answer)]) as client:
        with pytest.raises(memseal.ServerError) as refused:
            client.fetch("wanted")
        assert refused.value.code == memseal.ErrorCode.BUSY
        assert not refused.value.closes_connection
        with client.fetch("wanted") as asset:
            assert bytes(asset.view) == b"bytes"
