#!/usr/bin/env bash
# scripts/python-env.sh: the Python environment of the tests and benchmarks.
#
# Creates a virtual environment in target/python-venv (git-ignored), installs
# the pinned tools of clients/python/requirements-test.txt from PyPI (numpy,
# safetensors, pytest, mypy, build), builds a wheel of the memseal package
# from clients/python and installs it, so the tests import what a user would
# install. Prints the interpreter's path on its last line. Run it as often as
# you like: the tools are reinstalled only when the requirements change, the
# package every time (it takes a second).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

venv=target/python-venv
dist=target/python-dist
requirements=clients/python/requirements-test.txt
python=${PYTHON:-python3}

if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 9))' 2>/dev/null; then
    echo "python-env: $python is missing or older than 3.9; install Python 3.9 or newer" >&2
    exit 1
fi
if [[ ! -x $venv/bin/python ]]; then
    # Debian splits venv and ensurepip into python3-venv
    # (scripts/install-test-deps.sh installs it).
    "$python" -m venv "$venv"
fi
wanted=$(sha256sum "$requirements" | cut -d' ' -f1)
if [[ $(cat "$venv/.requirements" 2>/dev/null) != "$wanted" ]]; then
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"
    echo "$wanted" >"$venv/.requirements"
fi

rm -rf "$dist"
if ! "$venv/bin/python" -m build --wheel --no-isolation --outdir "$dist" clients/python >"$venv/build.log" 2>&1; then
    cat "$venv/build.log" >&2
    exit 1
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps --force-reinstall "$dist"/memseal-*.whl
echo "$PWD/$venv/bin/python"
