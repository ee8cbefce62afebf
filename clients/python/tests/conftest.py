"""Fixtures: a real memseald per test, and clients connected to it.

Every test runs against the real daemon binary (see daemon.py), on a
socket in a private temporary directory.
"""

from __future__ import annotations

from typing import Iterator

import pytest

import memseal
from daemon import Daemon


@pytest.fixture
def daemon() -> Iterator[Daemon]:
    with Daemon() as running:
        yield running


@pytest.fixture
def client(daemon: Daemon) -> Iterator[memseal.Client]:
    with memseal.Client(str(daemon.socket), client_name="pytest") as connected:
        yield connected


@pytest.fixture
def default_socket(daemon: Daemon, monkeypatch: pytest.MonkeyPatch) -> Daemon:
    """Make the daemon the one a client finds without being told (MEMSEAL_SOCKET)."""
    monkeypatch.setenv(memseal.SOCKET_ENV, str(daemon.socket))
    return daemon
