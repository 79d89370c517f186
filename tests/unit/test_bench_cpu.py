"""The benchmarks' CPU accounting (bench/cpu.py, bench/http.py): which processes a group counts, and
that a process ending during a series is counted through its parent's time for reaped children."""

from __future__ import annotations

import os
import sys
import time

import pytest

from bench.cpu import Process, group_s, processes
from bench.http import Cpu, _cpu

SERVER_SESSION = 100
POSTMASTER = 200


def _table(**changes: Process) -> dict[int, Process]:
    table = {
        100: Process(parent=1, session=SERVER_SESSION, own_s=1.0, reaped_s=0.0),  # gunicorn's master
        101: Process(parent=100, session=SERVER_SESSION, own_s=10.0, reaped_s=0.0),  # a worker
        200: Process(parent=1, session=200, own_s=2.0, reaped_s=5.0),  # the postmaster
        201: Process(parent=200, session=200, own_s=20.0, reaped_s=0.0),  # a backend
        300: Process(parent=1, session=300, own_s=99.0, reaped_s=99.0),  # someone else's
    }
    for pid, process in changes.items():
        table[int(pid[1:])] = process
    return {pid: process for pid, process in table.items() if process is not None}


def test_a_group_is_its_roots_their_children_and_their_ended_children():
    table = _table()
    assert group_s(table, lambda pid, process: pid == POSTMASTER) == 2.0 + 5.0 + 20.0
    assert group_s(table, lambda pid, process: process.session == SERVER_SESSION) == 1.0 + 10.0


def test_a_series_counts_what_each_group_used_and_a_process_that_ended_through_its_parent():
    before = _table()
    after = _table(p101=Process(100, SERVER_SESSION, 13.0, 0.0),
                   p200=Process(1, 200, 2.5, 5.0 + 20.5),  # the backend used 0.5 more, ended, was reaped
                   p201=None, p300=Process(1, 300, 150.0, 99.0))
    cpu = _cpu(before, after, 0.25, SERVER_SESSION, POSTMASTER)
    assert cpu == Cpu(server=3.0, database=0.5 + 0.5, client=0.25)
    assert cpu.total == 4.25
    assert _cpu(before, after, 0.25, SERVER_SESSION, None).database == 0.0  # SQLite: no database server
    assert _cpu(None, after, 0.25, SERVER_SESSION, POSTMASTER) is None  # no /proc


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads Linux's /proc")
def test_this_process_is_read_from_proc_with_its_parent_session_and_growing_cpu():
    first = processes()[os.getpid()]
    spin_until = time.process_time() + 0.2
    while time.process_time() < spin_until:
        pass
    second = processes()[os.getpid()]
    assert (first.parent, first.session) == (os.getppid(), os.getsid(0))
    assert second.own_s > first.own_s
