"""Which socket to connect to, and which daemon to trust behind it.

The rule every memseal client follows when the caller names no socket:

1. ``MEMSEAL_SOCKET``, when set and not empty, is an explicit path.
2. As root: the system socket ``/run/memseal/memseald.sock``.
3. Anyone else: the per-user socket ``$XDG_RUNTIME_DIR/memseal/memseald.sock``
   (``/tmp/memseal-<uid>/memseald.sock`` without ``XDG_RUNTIME_DIR``) if it
   exists, else the system socket. An existing per-user socket must be a
   socket owned by the caller in a directory owned by the caller that
   group and others cannot write, and the daemon behind it must run as the
   caller: anyone could have planted it.

On the system socket the daemon must run as root or as the owner of
``/run/memseal`` (a directory only root can create). On an explicit path
it must run as root or as the caller. ``expect_server_uid`` replaces each
of these with exactly that uid. :func:`resolve_socket` makes the choice
without connecting; the :class:`Endpoint` it returns says why.
"""

from __future__ import annotations

import os
import pwd
import stat as _stat
from dataclasses import dataclass
from typing import FrozenSet, Mapping, Optional

from ._errors import SOCKET_ENV, PeerRejected, UntrustedSocket

#: The system service's socket.
SYSTEM_SOCKET = "/run/memseal/memseald.sock"

#: The socket's file name inside the per-user directory.
SOCKET_FILE = "memseald.sock"


@dataclass(frozen=True)
class Endpoint:
    """A socket to connect to, why it was chosen, and whom to trust on it."""

    path: str
    reason: str
    """Why this socket, for people: "MEMSEAL_SOCKET", "running as root", ..."""
    trusted_uids: FrozenSet[int]
    """The uids the daemon behind the socket may run as."""
    trusted: str
    """The same, for people: "root or uid 1000"."""

    def check_peer(self, uid: int) -> None:
        """Refuse (:class:`PeerRejected`) a daemon running as an untrusted uid."""
        if uid not in self.trusted_uids:
            raise PeerRejected(uid, self.trusted, self.path, self.reason)


def _who(uid: int) -> str:
    """``uid 1000 (alice)``, or just ``uid 1000`` for a uid without a name."""
    try:
        return "uid %d (%s)" % (uid, pwd.getpwuid(uid).pw_name)
    except KeyError:
        return "uid %d" % uid


def _file_kind(mode: int) -> str:
    kinds = (
        (_stat.S_ISLNK, "a symbolic link"),
        (_stat.S_ISDIR, "a directory"),
        (_stat.S_ISREG, "a regular file"),
        (_stat.S_ISFIFO, "a named pipe"),
    )
    return next((name for test, name in kinds if test(mode)), "not a socket")


def per_user_socket_path(uid: int, environ: Mapping[str, str]) -> str:
    """The per-user socket of ``uid``."""
    runtime = environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return os.path.join(runtime, "memseal", SOCKET_FILE)
    return "/tmp/memseal-%d/%s" % (uid, SOCKET_FILE)


def _check_per_user(path: str, me: int, info: os.stat_result) -> None:
    """An existing per-user socket must be the caller's, in the caller's
    directory, which nobody else may write."""
    if not _stat.S_ISSOCK(info.st_mode):
        raise UntrustedSocket(path, "it is %s, not a socket" % _file_kind(info.st_mode))
    if info.st_uid != me:
        raise UntrustedSocket(path, "it belongs to %s, not to you (%s)" % (_who(info.st_uid), _who(me)))
    directory = os.path.dirname(path)
    dir_info = os.lstat(directory)
    if not _stat.S_ISDIR(dir_info.st_mode):
        raise UntrustedSocket(path, "its directory %s is %s" % (directory, _file_kind(dir_info.st_mode)))
    if dir_info.st_uid != me:
        raise UntrustedSocket(
            path, "its directory %s belongs to %s, not to you (%s)" % (directory, _who(dir_info.st_uid), _who(me))
        )
    if dir_info.st_mode & (_stat.S_IWGRP | _stat.S_IWOTH):
        raise UntrustedSocket(
            path,
            "its directory %s (mode 0o%03o) is writable by %s"
            % (directory, _stat.S_IMODE(dir_info.st_mode), "others" if dir_info.st_mode & _stat.S_IWOTH else "its group"),
        )


def _system_endpoint(reason: str) -> Endpoint:
    """The system socket: root, or the owner of its root-made directory."""
    directory = os.path.dirname(SYSTEM_SOCKET)
    try:
        info = os.lstat(directory)
    except OSError:
        info = None
    if info is not None and _stat.S_ISDIR(info.st_mode) and info.st_uid != 0:
        return Endpoint(
            SYSTEM_SOCKET,
            reason,
            frozenset({0, info.st_uid}),
            "root or %s, the owner of %s" % (_who(info.st_uid), directory),
        )
    return Endpoint(SYSTEM_SOCKET, reason, frozenset({0}), "root")


def _root_or_me(path: str, reason: str, me: int) -> Endpoint:
    trusted = "root" if me == 0 else "root or %s" % _who(me)
    return Endpoint(path, reason, frozenset({0, me}), trusted)


def resolve_socket(
    path: Optional[str] = None,
    expect_server_uid: Optional[int] = None,
    environ: Optional[Mapping[str, str]] = None,
) -> Endpoint:
    """Choose the socket by the rule above, without connecting.

    Raises :class:`UntrustedSocket` when the per-user socket exists but
    fails its checks. ``environ`` defaults to ``os.environ``.
    """
    env = os.environ if environ is None else environ
    me = os.geteuid()
    endpoint = _choose(path, env, me)
    if expect_server_uid is None:
        return endpoint
    return Endpoint(
        endpoint.path, endpoint.reason, frozenset({expect_server_uid}), "%s, as asked" % _who(expect_server_uid)
    )


def _choose(path: Optional[str], env: Mapping[str, str], me: int) -> Endpoint:
    if path:
        return _root_or_me(path, "the socket the caller named", me)
    override = env.get(SOCKET_ENV)
    if override:
        return _root_or_me(override, "from $%s" % SOCKET_ENV, me)
    if me == 0:
        return _system_endpoint("the system socket, for root")
    candidate = per_user_socket_path(me, env)
    try:
        info = os.lstat(candidate)
    except (FileNotFoundError, NotADirectoryError):
        return _system_endpoint("the system socket: there is no per-user socket at %s" % candidate)
    except OSError as e:
        raise UntrustedSocket(candidate, "cannot inspect it (%s)" % (e.strerror or e)) from None
    _check_per_user(candidate, me, info)
    return Endpoint(candidate, "the per-user socket", frozenset({me}), _who(me))
