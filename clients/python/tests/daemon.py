"""Start the real memseald on a private socket, for the tests and the benchmark.

The binary is ``$MEMSEALD`` or ``target/debug/memseald`` of this checkout
(``scripts/test`` builds it). A missing binary is an error, never a skip.
"""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable, List, Optional, Sequence

#: The repository's root directory.
ROOT = Path(__file__).resolve().parents[3]


def memseald_binary() -> Path:
    path = Path(os.environ.get("MEMSEALD", ROOT / "target" / "debug" / "memseald"))
    if not path.exists():
        raise RuntimeError("%s is not built; run `cargo build -p memseal-daemon` (scripts/test does)" % path)
    return path


def _limit_descriptors(nofile: int) -> Callable[[], None]:
    """What the child runs before exec to get RLIMIT_NOFILE ``nofile``."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    return limit


class Daemon:
    """A running memseald on a socket in its own temporary directory.

    ``descriptor_limit`` starts it with that RLIMIT_NOFILE (soft and hard),
    which decides, with ``--max-connections``, how many descriptors each
    connection may leave unread and so how many items a batch may name.
    """

    def __init__(
        self,
        args: Sequence[str] = (),
        wrapper: Sequence[str] = (),
        socket_path: Optional[Path] = None,
        descriptor_limit: Optional[int] = None,
    ):
        self._dir = tempfile.TemporaryDirectory(prefix="memseal-py-")
        self.dir = Path(self._dir.name)
        if wrapper:
            # A daemon started as another user must be able to read its
            # settings, and listens only in a directory of its own.
            os.chmod(self.dir, 0o755)
            for word in wrapper:
                if word.startswith("--reuid="):
                    uid = int(word.split("=", 1)[1])
                    os.chown(self.dir, uid, uid)
        self.socket = socket_path or self.dir / "memseald.sock"
        config = self.dir / "memseald.toml"
        config.write_text("")
        self.log = self.dir / "memseald.log"
        env = {k: v for k, v in os.environ.items() if k not in ("MEMSEAL_SOCKET", "NOTIFY_SOCKET", "LISTEN_FDS")}
        command: List[str] = [*wrapper, str(memseald_binary()), "--socket", str(self.socket), "--config", str(config)]
        limit = None if descriptor_limit is None else _limit_descriptors(descriptor_limit)
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [*command, *args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                env=env,
                preexec_fn=limit,
            )
        self._wait_until_serving()

    @property
    def pid(self) -> int:
        return self.process.pid

    def logs(self) -> str:
        return self.log.read_text(errors="replace")

    def _wait_until_serving(self) -> None:
        deadline = time.monotonic() + 20
        while True:
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(str(self.socket))
                return
            except OSError:
                pass
            finally:
                probe.close()
            if self.process.poll() is not None:
                raise RuntimeError("memseald exited during start-up:\n" + self.logs())
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("memseald did not serve within 20 s:\n" + self.logs())
            time.sleep(0.01)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._dir.cleanup()

    def __enter__(self) -> Daemon:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
