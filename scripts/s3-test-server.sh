#!/usr/bin/env bash
# s3-test-server.sh: install the S3-compatible server that the fleet tests
# and the fleet benchmark run against.
#
# The server is `moto_server`, from the `moto[server]` package on PyPI: a
# real HTTP server that speaks the S3 API (ETags, ranged GETs, conditional
# GETs and PUTs, multipart uploads), keeps its state in memory and accepts
# any credentials. It is installed into a virtual environment of its own,
# target/s3-venv, so that nothing touches the system's Python (the Python
# client's tests use another one).
#
#   scripts/s3-test-server.sh            install if missing; print the path of moto_server
#   scripts/s3-test-server.sh --check    print the path if installed, else exit 1
#
# The tests find the server through MEMSEAL_S3_SERVER (set it to use another
# moto_server) or, by default, at target/s3-venv/bin/moto_server.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

venv=target/s3-venv
server=$venv/bin/moto_server
# moto 5.2 is the line the tests were written against; its server needs
# flask and friends, which the `server` extra brings.
requirement='moto[server]>=5.2,<5.3'

if [[ -x $server ]] && "$venv/bin/python" -c 'import moto.server' 2>/dev/null; then
    echo "$PWD/$server"
    exit 0
fi
if [[ ${1:-} == --check ]]; then
    exit 1
fi

python=$(command -v python3 || true)
[[ -n $python ]] || { echo "s3-test-server: python3 not found" >&2; exit 1; }
echo "s3-test-server: installing $requirement into $venv" >&2
rm -rf "$venv"
if ! "$python" -m venv "$venv" >/dev/null 2>&1; then
    # Debian's python3 keeps venv (ensurepip) in a package of its own.
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "s3-test-server: installing python3-venv from Debian's packages" >&2
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            python3-venv >/dev/null
    fi
    rm -rf "$venv"
    "$python" -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check "$requirement" >&2
"$venv/bin/python" -c 'import moto.server' ||
    { echo "s3-test-server: moto installed but does not import" >&2; exit 1; }
echo "$PWD/$server"
