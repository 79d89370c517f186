"""CPU time of groups of processes, from Linux's /proc: what a benchmark's processes spend beside
this one's own `time.process_time()` (a server's workers, the PostgreSQL cluster).

A group is the processes a predicate picks, their children, and (through the picked processes' time
for reaped children) their children that ended: an autovacuum worker or a backend that came and
went between two readings is counted by its parent's.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, NamedTuple


class Process(NamedTuple):
    """One process as /proc/<pid>/stat shows it."""

    parent: int
    session: int
    own_s: float  # user and system CPU seconds
    reaped_s: float  # its ended children's, once it waited for them


CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def processes() -> dict[int, Process] | None:
    """Every process's parent, session and CPU times, from /proc/<pid>/stat; None without /proc."""
    if not Path("/proc/self/stat").exists():
        return None
    found = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()  # the name before it may hold spaces
        except OSError:  # ended since the listing
            continue
        # fields[0] is the 3rd field of stat(5): state; then ppid, pgrp, session, ... utime (14th) ...
        own, reaped = (int(fields[11]) + int(fields[12])), (int(fields[13]) + int(fields[14]))
        found[int(entry.name)] = Process(int(fields[1]), int(fields[3]), own / CLOCK_TICKS, reaped / CLOCK_TICKS)
    return found


def group_s(processes: dict[int, Process], roots: Callable[[int, Process], bool]) -> float:
    """CPU seconds of the processes `roots` picks, their children, and their ended children."""
    picked = {pid for pid, process in processes.items() if roots(pid, process)}
    return sum(process.own_s + (process.reaped_s if pid in picked else 0.0)
               for pid, process in processes.items() if pid in picked or process.parent in picked)


def postmaster_pid(site) -> int | None:
    """The PostgreSQL site's postmaster (the first line of its data directory's postmaster.pid)."""
    cluster = getattr(site, "cluster", None)
    if cluster is None:
        return None
    return int((cluster.data / "postmaster.pid").read_text().split()[0])
