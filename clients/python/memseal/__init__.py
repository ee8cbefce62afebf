"""memseal for Python: sealed, shared, read-only assets from memseald.

memseald keeps immutable assets in sealed memfds and hands out read-only
descriptors to them over a Unix socket. This package speaks its protocol
(PROTOCOL.md, version 2, and version 1 with older daemons) with nothing
but the standard library, checks every descriptor's seals before mapping
it, and gives the bytes as a read-only mapping: many worker processes read
one copy of a 3 GB model, and nobody can change it under them.

Typical use::

    import memseal

    with memseal.Client() as client:
        client.publish_file("models/en", "en.safetensors")
        asset = client.fetch("models/en")
        print(asset.info.version, bytes(asset.view[:16]))
        shards = client.fetch_many(["models/en/0", ("models/en/1", 3)])

With numpy installed (``pip install 'memseal[numpy]'``),
``asset.ndarray(dtype, shape, offset)`` is a read-only zero-copy array and
:mod:`memseal.safetensors` loads safetensors files as views of the sealed
mapping. numpy is imported only when one of those is used.

Layout, in the order data flows:

- ``_endpoint``: which socket, and whom to trust behind it;
- ``_wire`` and ``_messages``: the bincode rules and the messages;
- ``_channel``: frames and descriptors on the socket;
- ``_sealed``: checking a descriptor and mapping it; the lifetime rules;
- ``_client``: the conversations; ``_numpy`` and ``safetensors``: views.
"""

from ._channel import MAX_FRAME_LEN
from ._client import DEFAULT_TIMEOUT, Client, FetchResult, sealed_memfd
from ._endpoint import SYSTEM_SOCKET, Endpoint, per_user_socket_path, resolve_socket
from ._errors import (
    SOCKET_ENV,
    ClosedError,
    ConnectError,
    ErrorCode,
    HeaderError,
    LayoutError,
    MemsealError,
    PeerRejected,
    ProtocolError,
    ServerError,
    UntrustedSocket,
    VerifyError,
)
from ._messages import (
    PROTOCOL_VERSION,
    AssetInfo,
    Event,
    FetchItem,
    Limits,
    SelectorLike,
    ServerStatus,
    SessionLimits,
)
from ._sealed import (
    F_SEAL_EXEC,
    F_SEAL_FUTURE_WRITE,
    F_SEAL_GROW,
    F_SEAL_SEAL,
    F_SEAL_SHRINK,
    F_SEAL_WRITE,
    IMMUTABLE_SEALS,
    Asset,
    Sealed,
    map_sealed,
    seal_names,
)

#: The package version; it follows the Rust crates' version.
__version__ = "0.1.0"

__all__ = [
    "PROTOCOL_VERSION",
    "MAX_FRAME_LEN",
    "DEFAULT_TIMEOUT",
    "SOCKET_ENV",
    "SYSTEM_SOCKET",
    "F_SEAL_SEAL",
    "F_SEAL_SHRINK",
    "F_SEAL_GROW",
    "F_SEAL_WRITE",
    "F_SEAL_FUTURE_WRITE",
    "F_SEAL_EXEC",
    "IMMUTABLE_SEALS",
    "ErrorCode",
    "AssetInfo",
    "Limits",
    "SessionLimits",
    "ServerStatus",
    "Event",
    "Endpoint",
    "MemsealError",
    "ConnectError",
    "UntrustedSocket",
    "PeerRejected",
    "ServerError",
    "ProtocolError",
    "VerifyError",
    "ClosedError",
    "LayoutError",
    "HeaderError",
    "Sealed",
    "Asset",
    "Client",
    "FetchItem",
    "SelectorLike",
    "FetchResult",
    "resolve_socket",
    "per_user_socket_path",
    "map_sealed",
    "seal_names",
    "sealed_memfd",
    "fd_variable",
]


def fd_variable(name: str) -> str:
    """The environment variable that carries ``name``'s descriptor to a
    child process (PROTOCOL.md section 13): ``MEMSEAL_FD_MODELS_EN_BIN``."""
    return "MEMSEAL_FD_" + "".join(c if c.isascii() and c.isalnum() else "_" for c in name.upper())
