#!/usr/bin/env python3
"""Worker processes sharing one safetensors model: memory and time to ready.

    workers.py [--size 512M] [--tensors 300] [--workers 8]
               [--methods memseal,load_file,safe_open] [--json FILE]

Writes a safetensors file of ``--size`` bytes with ``--tensors`` float32
tensors to a tmpfs directory (/dev/shm), publishes it to a memseald of its
own, then, for each method, starts ``--workers`` fresh Python processes at
once, as a pre-fork server starts its workers. Each worker loads every
tensor and reads one element of each ("ready"), then reads one byte of
every page so that the whole model is mapped, and holds it. The methods:

- ``memseal``: ``memseal.safetensors.load``, read-only views of one sealed
  mapping;
- ``load_file``: ``safetensors.numpy.load_file`` of the tmpfs file, each
  worker its own copy;
- ``safe_open``: ``safetensors.safe_open(..., framework="np")`` of the same
  tmpfs file, kept open, ``get_tensor`` for every tensor.

Memory is the model's footprint while every worker holds its tensors: the
growth, from just before loading, of each worker's anonymous and shared
memory Pss (``Pss_Anon + Pss_Shmem`` of smaps_rollup: heap copies, memfd
and tmpfs mappings, each shared page divided among its mappers) summed over
the workers, plus the daemon's. Libraries are left out: they are the same
for every method. Time is from each worker's start (just before its
process is spawned) to ready, median and slowest of the workers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "clients" / "python" / "tests"))

from procinfo import memory_pss_kib  # noqa: E402

METHODS = ("memseal", "load_file", "safe_open")
ASSET = "bench/model"
PAGE = 4096


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(text[:-1]) * units[text[-1].upper()] if text[-1].upper() in units else int(text)


# ---------------------------------------------------------------------------
# The worker: one process, one method
# ---------------------------------------------------------------------------


def load(method: str, source: str) -> Any:
    """Every tensor, by the method's own means, and what must stay open with them."""
    if method == "memseal":
        import memseal.safetensors

        return memseal.safetensors.load(source), None
    if method == "load_file":
        import safetensors.numpy

        return safetensors.numpy.load_file(source), None
    import safetensors

    handle = safetensors.safe_open(source, framework="np")
    return {name: handle.get_tensor(name) for name in handle.keys()}, handle


def worker(method: str, source: str) -> None:
    import numpy  # every method needs it; imported before the baseline

    if method == "memseal":
        import memseal.safetensors  # noqa: F401
    else:
        import safetensors.numpy  # noqa: F401
    before = memory_pss_kib(os.getpid())
    started = time.monotonic()
    tensors, keep = load(method, source)
    checksum = sum(float(t.reshape(-1)[0]) for t in tensors.values() if t.size)
    ready = time.monotonic()
    # Now map the whole model, as serving would: one byte of every page.
    for t in tensors.values():
        t.reshape(-1).view(numpy.uint8)[::PAGE].sum()
    report = {"before_kib": before, "load_s": ready - started, "ready": ready, "checksum": checksum}
    print(json.dumps(report), flush=True)
    sys.stdin.readline()  # held until the parent has measured
    del tensors, keep


# ---------------------------------------------------------------------------
# The parent: the model, the daemon, the runs
# ---------------------------------------------------------------------------


def write_model(path: Path, size: int, count: int) -> None:
    """A safetensors file of about ``size`` bytes: ``count`` float32
    tensors of varied shapes, with random contents."""
    import numpy

    rng = numpy.random.default_rng(7)
    weights = rng.uniform(0.5, 1.5, count)
    elements = [max(1, int(size / 4 * w / weights.sum())) for w in weights]
    header: Dict[str, Any] = {"__metadata__": {"made_by": "bench/python/workers.py"}}
    offset = 0
    shapes = []
    for i, n in enumerate(elements):
        rows = 256 if n >= 256 else 1
        shape = [rows, n // rows]
        nbytes = 4 * shape[0] * shape[1]
        header["layers.%03d.weight" % i] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + nbytes]}
        shapes.append(shape)
        offset += nbytes
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as out:
        out.write(len(text).to_bytes(8, "little") + text)
        for shape in shapes:
            out.write(rng.standard_normal(shape[0] * shape[1], dtype=numpy.float32).tobytes())


def run_method(method: str, source: str, workers: int, daemon_pid: Optional[int]) -> Dict[str, Any]:
    daemon_before = memory_pss_kib(daemon_pid) if daemon_pid else 0
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", method, source]
    starts: List[float] = []
    processes = []
    for _ in range(workers):
        starts.append(time.monotonic())
        processes.append(
            subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=os.environ.copy())
        )
    reports = []
    for process in processes:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line:
            raise RuntimeError("a %s worker died: exit %s" % (method, process.wait()))
        reports.append(json.loads(line))
    # Every worker holds the whole model now: measure them all at once.
    grown = sum(memory_pss_kib(p.pid) - r["before_kib"] for p, r in zip(processes, reports))
    if daemon_pid:
        grown += memory_pss_kib(daemon_pid) - daemon_before
    for process in processes:
        assert process.stdin is not None
        process.stdin.write("\n")
        process.stdin.flush()
    for process in processes:
        process.wait(60)
    to_ready = [r["ready"] - start for r, start in zip(reports, starts)]
    if len({r["checksum"] for r in reports}) != 1:
        raise RuntimeError("%s workers read different values" % method)
    return {
        "method": method,
        "memory_kib": grown,
        "ready_median_s": statistics.median(to_ready),
        "ready_max_s": max(to_ready),
        "load_median_s": statistics.median(r["load_s"] for r in reports),
    }


def machine() -> str:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30)
    return "%s, %d CPUs, %.0f GiB, Linux %s, Python %s" % (
        cpu, os.cpu_count() or 0, memory, platform.release(), platform.python_version()
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="512M", help="model size, e.g. 512M (default)")
    parser.add_argument("--tensors", type=int, default=300, help="number of tensors (default 300)")
    parser.add_argument("--workers", type=int, default=8, help="worker processes (default 8)")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated, of: " + ", ".join(METHODS))
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--worker", nargs=2, metavar=("METHOD", "SOURCE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker)
        return 0

    from daemon import Daemon  # the tests' launcher of the real memseald

    import memseal

    methods = args.methods.split(",")
    size = parse_size(args.size)
    with tempfile.TemporaryDirectory(prefix="memseal-bench-", dir="/dev/shm") as scratch:
        model = Path(scratch) / "model.safetensors"
        write_model(model, size, args.tensors)
        file_size = model.stat().st_size
        with Daemon() as daemon:
            os.environ[memseal.SOCKET_ENV] = str(daemon.socket)
            with memseal.Client() as client:
                client.publish_file(ASSET, str(model))
            results = [
                run_method(m, ASSET if m == "memseal" else str(model), args.workers, daemon.pid if m == "memseal" else None)
                for m in methods
            ]
    print("%d workers, %d tensors, file %.1f MiB; %s" % (args.workers, args.tensors, file_size / (1 << 20), machine()))
    print()
    print("| method | model memory | x file | start to ready, median | slowest | load only, median |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in results:
        r["ratio"] = r["memory_kib"] * 1024 / file_size
        print(
            "| %s | %.0f MiB | %.2fx | %.0f ms | %.0f ms | %.1f ms |"
            % (r["method"], r["memory_kib"] / 1024, r["ratio"], r["ready_median_s"] * 1000,
               r["ready_max_s"] * 1000, r["load_median_s"] * 1000)
        )
    if args.json:
        summary = {"file_bytes": file_size, "workers": args.workers, "tensors": args.tensors, "machine": machine()}
        Path(args.json).write_text(json.dumps({**summary, "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
