"""The default-socket rule: which socket a client picks, and whom it trusts.

The rule differs for root and for everyone else, so most of these tests
run a small script as the unprivileged user ``nobody`` (with setpriv),
against sockets and daemons set up by root the way a user, or someone
planting a socket for them, would.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Dict, Iterator

import pytest

import memseal
from daemon import ROOT, Daemon

NOBODY = 65534
AS_NOBODY = ["setpriv", "--reuid=%d" % NOBODY, "--regid=%d" % NOBODY, "--clear-groups"]
SOURCE = ROOT / "clients" / "python"

# As root only (it acts as two users); with MEMSEAL_REQUIRE_ALL=1 it runs, and fails, anyway.
pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 and os.environ.get("MEMSEAL_REQUIRE_ALL") != "1", reason="needs root to act as two users"
)


def nobody_python() -> str:
    """An interpreter that nobody may run: ours if it is reachable, else the system's."""
    for candidate in (os.path.realpath(sys.executable), "/usr/bin/python3"):
        probe = subprocess.run([*AS_NOBODY, candidate, "-c", "pass"], capture_output=True)
        if probe.returncode == 0:
            return candidate
    raise RuntimeError("no Python interpreter that the user nobody can run")


def as_nobody(script: str, env: Dict[str, str]) -> str:
    """Run ``script`` as nobody with the package from the source tree; its stdout."""
    full_env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(SOURCE), "PYTHONDONTWRITEBYTECODE": "1", **env}
    out = subprocess.run(
        [*AS_NOBODY, nobody_python(), "-c", textwrap.dedent(script)],
        capture_output=True, text=True, env=full_env, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.fixture
def base() -> Iterator[Path]:
    """A directory that nobody can reach (pytest's own are root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="memseal-endpoint-"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def runtime_dir(base: Path) -> Path:
    """An XDG_RUNTIME_DIR for nobody, with the memseal directory in it."""
    runtime = base / "run"
    (runtime / "memseal").mkdir(parents=True)
    for path in (runtime, runtime / "memseal"):
        os.chown(path, NOBODY, NOBODY)
        os.chmod(path, 0o700)
    return runtime


RESOLVE = """
    import memseal
    try:
        endpoint = memseal.resolve_socket()
        print("path=" + endpoint.path)
        print("reason=" + endpoint.reason)
    except memseal.UntrustedSocket as e:
        print("refused=%s" % e)
"""


def field(out: str, key: str) -> str:
    return next(line[len(key) + 1 :] for line in out.splitlines() if line.startswith(key + "="))


def test_root_uses_the_system_socket_unless_told_otherwise() -> None:
    assert memseal.resolve_socket(environ={}).path == memseal.SYSTEM_SOCKET
    assert "for root" in memseal.resolve_socket(environ={"MEMSEAL_SOCKET": ""}).reason
    named = memseal.resolve_socket(environ={"MEMSEAL_SOCKET": "/x.sock"})
    assert (named.path, named.trusted_uids) == ("/x.sock", frozenset({0}))
    assert memseal.resolve_socket("/y.sock", environ={"MEMSEAL_SOCKET": "/x.sock"}).path == "/y.sock"
    assert memseal.resolve_socket("/y.sock", expect_server_uid=7).trusted_uids == frozenset({7})


def test_without_a_per_user_socket_a_user_gets_the_system_socket(runtime_dir: Path) -> None:
    out = as_nobody(RESOLVE, {"XDG_RUNTIME_DIR": str(runtime_dir)})
    assert field(out, "path") == memseal.SYSTEM_SOCKET
    assert str(runtime_dir / "memseal" / "memseald.sock") in field(out, "reason")
    out = as_nobody(RESOLVE, {})
    assert "/tmp/memseal-65534/memseald.sock" in field(out, "reason")


def test_a_user_reaches_their_own_daemon_on_the_per_user_socket(runtime_dir: Path) -> None:
    path = runtime_dir / "memseal" / "memseald.sock"
    with Daemon(wrapper=AS_NOBODY, socket_path=path):
        out = as_nobody(
            """
            import memseal
            with memseal.Client() as client:
                client.publish_bytes("user/65534/x", b"mine")
                print("reason=" + client.endpoint.reason)
                print("uid=%d" % client.server_uid)
                print("bytes=" + bytes(client.fetch("user/65534/x")).decode())
            """,
            {"XDG_RUNTIME_DIR": str(runtime_dir)},
        )
    assert (field(out, "reason"), field(out, "uid"), field(out, "bytes")) == ("the per-user socket", "65534", "mine")


def test_a_root_daemon_on_a_per_user_socket_is_refused_unless_asked_for(runtime_dir: Path) -> None:
    path = runtime_dir / "memseal" / "memseald.sock"
    # memseald refuses to listen in a directory that is not its own, so
    # root's daemon listens in its own and its socket is moved in.
    with Daemon() as daemon:
        os.rename(daemon.socket, path)
        os.chown(path, NOBODY, NOBODY)  # the file looks right; the listener is root
        out = as_nobody(
            """
            import memseal
            try:
                memseal.Client()
            except memseal.PeerRejected as e:
                print("refused=%d" % e.uid)
            with memseal.Client(expect_server_uid=0) as client:
                print("asked=%d" % client.server_uid)
            """,
            {"XDG_RUNTIME_DIR": str(runtime_dir)},
        )
    assert (field(out, "refused"), field(out, "asked")) == ("0", "0")


def listening_socket(path: Path) -> socket.socket:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    return listener


@pytest.mark.parametrize(
    "setup, words",
    [
        ("socket-of-root", "it belongs to uid 0 (root), not to you (uid 65534"),
        ("directory-of-root", "belongs to uid 0 (root), not to you"),
        ("directory-writable-by-others", "(mode 0o777) is writable by others"),
        ("directory-writable-by-group", "(mode 0o770) is writable by its group"),
        ("symlink", "it is a symbolic link, not a socket"),
        ("regular-file", "it is a regular file, not a socket"),
    ],
)
def test_a_planted_per_user_socket_is_refused_saying_who_owns_what(
    runtime_dir: Path, base: Path, setup: str, words: str
) -> None:
    directory = runtime_dir / "memseal"
    path = directory / "memseald.sock"
    listener = None
    if setup == "symlink":
        listener = listening_socket(base / "elsewhere.sock")
        os.chown(base / "elsewhere.sock", NOBODY, NOBODY)
        path.symlink_to(base / "elsewhere.sock")
        os.lchown(path, NOBODY, NOBODY)
    elif setup == "regular-file":
        path.write_text("")
        os.chown(path, NOBODY, NOBODY)
    else:
        listener = listening_socket(path)
        if setup != "socket-of-root":
            os.chown(path, NOBODY, NOBODY)
        if setup == "directory-of-root":
            os.chown(directory, 0, 0)
            os.chmod(directory, 0o755)
        elif setup == "directory-writable-by-others":
            os.chmod(directory, 0o777)
        elif setup == "directory-writable-by-group":
            os.chmod(directory, 0o770)
    try:
        out = as_nobody(
            RESOLVE
            + """
    try:
        memseal.Client()
    except memseal.UntrustedSocket as e:
        print("client=refused")
""",
            {"XDG_RUNTIME_DIR": str(runtime_dir)},
        )
    finally:
        if listener is not None:
            listener.close()
    assert words in field(out, "refused"), out
    assert field(out, "client") == "refused"


SYSTEM_SOCKET_SCENARIO = """
import os, subprocess, sys
sys.path.insert(0, sys.argv[1])
import memseal
from daemon import Daemon

subprocess.run(["mount", "-t", "tmpfs", "tmpfs", "/run"], check=True)
os.mkdir("/run/memseal")
os.chown("/run/memseal", 65534, 65534)
as_user = lambda uid: ["setpriv", "--reuid=%d" % uid, "--regid=%d" % uid, "--clear-groups"]
os.environ.pop("MEMSEAL_SOCKET", None)
with Daemon(wrapper=as_user(65534), socket_path=memseal.SYSTEM_SOCKET):
    with memseal.Client() as client:
        print("owner=%d %s" % (client.server_uid, client.endpoint.trusted))
# A stranger's daemon (memseald itself refuses to listen in a directory it
# does not own, so its socket is moved in).
os.mkdir("/run/stranger", 0o700)
os.chown("/run/stranger", 65533, 65533)
with Daemon(wrapper=as_user(65533), socket_path="/run/stranger/memseald.sock") as stranger:
    os.rename(stranger.socket, memseal.SYSTEM_SOCKET)
    try:
        memseal.Client()
    except memseal.PeerRejected as e:
        print("stranger=%d" % e.uid)
"""


def test_on_the_system_socket_root_trusts_the_owner_of_its_directory() -> None:
    # In a mount namespace of its own, over a private /run: the host's stays untouched.
    out = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", sys.executable, "-c", SYSTEM_SOCKET_SCENARIO,
         str(Path(__file__).parent)],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert field(out.stdout, "owner") == "65534 root or uid 65534 (nobody), the owner of /run/memseal"
    assert field(out.stdout, "stranger") == "65533"
