#!/usr/bin/env bash
# install-test-deps.sh: install the system tools the test suite drives.
#
# The tests run real things: systemd's own tools (systemd-analyze to check
# the unit files, systemd-socket-activate to pass a listening socket exactly
# as systemd does), setpriv to drop to an unprivileged user, unshare for a
# private /run, python3 (with venv) for the second-language client, and,
# for the real-systemd test, systemd-nspawn and debootstrap; for the C
# library, a C and C++ compiler, pkg-config and valgrind; for the container
# image, podman and runc; PyYAML to check the Kubernetes manifests.
# Anything missing is installed from the distribution's
# packages when running as root; otherwise the missing tools are listed and
# the tests that need them say so.
set -euo pipefail

declare -A package_of=(
    [systemd-analyze]=systemd
    [systemd-socket-activate]=systemd
    [setpriv]=util-linux
    [prlimit]=util-linux
    [unshare]=util-linux
    [python3]=python3
    [systemd-nspawn]=systemd-container
    [debootstrap]=debootstrap
    [cc]=gcc
    [c++]=g++
    [pkg-config]=pkg-config
    [readelf]=binutils
    [valgrind]=valgrind
    [podman]=podman
    [runc]=runc
)

missing=()
for tool in "${!package_of[@]}"; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("${package_of[$tool]}")
done
# The Python package's tests run in a virtual environment (scripts/python-env.sh);
# Debian ships venv and ensurepip separately.
if command -v python3 >/dev/null 2>&1 && ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    missing+=(python3-venv)
fi
yaml_missing() { ! python3 -c 'import yaml' >/dev/null 2>&1; }
if yaml_missing && [[ $(command -v python3) == /usr/bin/python3 ]]; then
    missing+=(python3-yaml)
elif yaml_missing && [[ $(id -u) -eq 0 ]]; then
    # A python3 of its own (pyenv, a venv): PyYAML from PyPI.
    python3 -m pip install --quiet pyyaml >/dev/null
fi
if ((${#missing[@]} == 0)); then
    exit 0
fi
mapfile -t packages < <(printf '%s\n' "${missing[@]}" | sort -u)
if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
    echo "install-test-deps: missing packages: ${packages[*]} (install them, or run as root on Debian)" >&2
    exit 0
fi
echo "install-test-deps: installing ${packages[*]}" >&2
apt-get update -qq >/dev/null
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
