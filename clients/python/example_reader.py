#!/usr/bin/env python3
"""Print the size and first bytes of a memseal asset.

    example_reader.py NAME [--socket PATH] [--count N]

If the environment holds a descriptor for NAME (MEMSEAL_FD_<VAR>, set by a
parent process as PROTOCOL.md section 13 describes), the script maps that
descriptor and never talks to the daemon. Otherwise it fetches NAME from
memseald. Either way the descriptor is checked for its seals before a byte
is read.
"""

import argparse
import os
import sys

import memseal


def open_asset(name: str, socket_path):
    """Return (description of the source, verified Sealed object)."""
    variable = memseal.fd_variable(name)
    inherited = os.environ.pop(variable, None)
    if inherited is not None:
        try:
            fd = int(inherited)
        except ValueError:
            raise SystemExit("example_reader: %s=%r is not a descriptor number" % (variable, inherited))
        # The size comes from fstat: there is no AssetInfo to compare with.
        return "inherited descriptor %d (%s)" % (fd, variable), memseal.map_sealed(fd)
    with memseal.Client(socket_path, client_name="example_reader") as client:
        asset = client.fetch(name)
    return "memseald, version %d" % asset.info.version, asset


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", help="the asset's name, e.g. models/en/tokenizer.json")
    parser.add_argument("--socket", help="memseald's socket (default: $MEMSEAL_SOCKET or the system socket)")
    parser.add_argument("--count", type=int, default=16, help="how many leading bytes to show (default: 16)")
    args = parser.parse_args()
    try:
        source, sealed = open_asset(args.name, args.socket)
    except memseal.MemsealError as e:
        print("example_reader: %s" % e, file=sys.stderr)
        return 1
    with sealed:
        head = bytes(sealed.view[: max(args.count, 0)])
        print("%s: %d bytes from %s" % (args.name, sealed.size, source))
        text = "".join(chr(b) if 0x20 <= b < 0x7F else "." for b in head)
        print("first %d bytes: %s |%s|" % (len(head), head.hex(" "), text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
