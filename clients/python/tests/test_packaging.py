"""The package as users get it: installed, typed, versioned with the crates,
numpy only on demand, and the README's examples working as written."""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path
from typing import List

import numpy as np
import safetensors.numpy

import memseal
from daemon import ROOT, Daemon


def crate_version() -> str:
    workspace = (ROOT / "Cargo.toml").read_text()
    match = re.search(r'\[workspace\.package\][^\[]*?\nversion = "([^"]+)"', workspace)
    assert match, "no [workspace.package] version in Cargo.toml"
    return match.group(1)


def readme_python_blocks() -> List[str]:
    """The Python examples of the top README's Python section."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Python\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_the_version_follows_the_crates() -> None:
    assert memseal.__version__ == importlib.metadata.version("memseal") == crate_version()


def test_the_tests_import_the_installed_wheel_with_its_type_marker() -> None:
    installed = Path(memseal.__file__).resolve().parent
    assert installed.parent == Path(sysconfig.get_paths()["purelib"]).resolve(), installed
    assert (installed / "py.typed").exists()


def test_importing_the_package_does_not_import_numpy(daemon: Daemon) -> None:
    script = (
        "import sys, memseal\n"
        "with memseal.Client(sys.argv[1]) as c:\n"
        "    c.publish_bytes('t/x', b'abc'); bytes(c.fetch('t/x'))\n"
        "print('numpy' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", script, str(daemon.socket)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_pip_install_in_a_fresh_environment_runs_the_readme_example(daemon: Daemon, tmp_path: Path) -> None:
    # A new environment without numpy, the package installed the README's way.
    fresh = tmp_path / "venv"
    venv.create(fresh, with_pip=True)
    python = str(fresh / "bin" / "python")
    install = subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(ROOT / "clients" / "python")],
        capture_output=True, text=True, timeout=300,
    )
    assert install.returncode == 0, install.stderr
    example = readme_python_blocks()[0]
    env = dict(os.environ, MEMSEAL_SOCKET=str(daemon.socket))
    out = subprocess.run([python, "-c", example], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1 [2, 3, 5, 7, 11]"


def test_the_readme_safetensors_example_runs(daemon: Daemon, tmp_path: Path) -> None:
    tensors = {"embed": np.zeros((4, 8), np.float32), "bias": np.ones(8, np.float16)}
    safetensors.numpy.save_file(tensors, str(tmp_path / "tiny.safetensors"))
    example = readme_python_blocks()[1]
    env = dict(os.environ, MEMSEAL_SOCKET=str(daemon.socket))
    out = subprocess.run([sys.executable, "-c", example], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "{'embed': (4, 8), 'bias': (8,)}"  # in the order of their bytes
