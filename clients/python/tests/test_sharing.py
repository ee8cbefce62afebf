"""8 spawned processes load one model through memseal: one copy between them.

A small run of the benchmark (bench/python/workers.py): it asserts the
bound loosely and leaves the figures to the full benchmark.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from daemon import ROOT

WORKERS = ROOT / "bench" / "python" / "workers.py"


def test_eight_workers_hold_one_model_once(tmp_path: Path) -> None:
    out = tmp_path / "sharing.json"
    run = subprocess.run(
        [sys.executable, str(WORKERS), "--size", "64M", "--tensors", "100", "--workers", "8",
         "--methods", "memseal", "--json", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr
    report = json.loads(out.read_text())
    (memseal_run,) = report["results"]
    # Summed over the workers and the daemon; a copy per worker would be ~8x.
    assert memseal_run["memory_kib"] * 1024 <= 1.5 * report["file_bytes"], run.stdout
    assert memseal_run["memory_kib"] * 1024 >= 0.9 * report["file_bytes"], "the model was not mapped"
