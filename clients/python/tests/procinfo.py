"""What /proc says about a process: its mappings, descriptors and Pss.

Shared by the tests and the benchmark (bench/python/workers.py).
"""

from __future__ import annotations

import os
from typing import Dict


def mapped_inode(inode: int) -> int:
    """How many mappings of this process show the file with this inode."""
    count = 0
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split()
            if len(fields) >= 5 and fields[4] == str(inode) and "memfd:" in line:
                count += 1
    return count


def open_fds_of(inode: int) -> int:
    """How many descriptors of this process refer to the file with this inode."""
    count = 0
    for entry in os.listdir("/proc/self/fd"):
        try:
            if os.stat("/proc/self/fd/" + entry).st_ino == inode:
                count += 1
        except OSError:
            pass
    return count


def memory_pss_kib(pid: int) -> int:
    """The anonymous and shared-memory Pss of process ``pid``, in KiB:
    heap and private copies, memfd and tmpfs mappings, each shared page
    divided among the processes that map it. File-backed mappings
    (programs and libraries) are left out."""
    fields = {}
    with open("/proc/%d/smaps_rollup" % pid) as rollup:
        for line in rollup:
            key, _, value = line.partition(":")
            if key in ("Pss_Anon", "Pss_Shmem"):
                fields[key] = int(value.split()[0])
    if len(fields) != 2:
        raise RuntimeError("/proc/%d/smaps_rollup lacks Pss_Anon or Pss_Shmem (kernel too old?)" % pid)
    return sum(fields.values())


def memfds_open() -> int:
    """How many descriptors of this process refer to a memfd."""
    count = 0
    for entry in os.listdir("/proc/self/fd"):
        try:
            if os.readlink("/proc/self/fd/" + entry).startswith("/memfd:"):
                count += 1
        except OSError:
            pass
    return count


def mapping_rss_kib(inode: int) -> int:
    """Resident KiB of this process's mappings of the file with this inode."""
    total = 0
    current = False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            fields = line.split()
            if "-" in fields[0] and len(fields) >= 5:
                current = fields[4] == str(inode)
            elif current and fields[0] == "Rss:":
                total += int(fields[1])
    return total


def open_descriptors() -> Dict[int, str]:
    """Every descriptor this process holds open, with what it refers to
    (``/memfd:memseal (deleted)``, ``socket:[123]``...), to compare before
    and after and to name what leaked."""
    held = {}
    for entry in os.listdir("/proc/self/fd"):
        try:
            held[int(entry)] = os.readlink("/proc/self/fd/" + entry)
        except OSError:
            pass  # the descriptor of the listing itself, closed by now
    return held
