"""Metric 5: single-event HTTP POST under gunicorn, with GET /v1/health on the same server as reference.

`revshare serve --workers 2` runs as a subprocess on a free loopback port over a seeded database,
with a billing key created for the run. A bounded load generator (`CLIENT_THREADS` threads, a fixed
number of requests, an overall deadline) posts one paid invoice per request and records each
latency; then it sends as many GET /v1/health requests. A request fails when its connection fails or
its response is not whole or not the status expected; the rate and the latencies count every request
sent, failed ones too, and every verdict on them requires that none failed. The health rate is what
the same server, client and machine manage for a request that touches no database: the reference the
POST rate is compared with. gunicorn's sync workers close the connection after each response (no
keep-alive), so each request opens a connection of its own; both series pay that alike. The
generator shares the server's two cores, so it is kept lean: each request's bytes are built before
the clock starts, sent on a plain socket and the response read to its end and checked (status line,
Content-Length), which costs about half the CPU of `http.client` (0.17 against 0.33 ms a POST,
measured side by side). The server is stopped (SIGTERM, then SIGKILL after a grace period) in a
`finally`.

A rate on a shared machine moves with the machine's other work; the CPU a request costs moves far
less. So each series also records the CPU time used by each group of processes while it ran (from
Linux's /proc; not measured elsewhere): the server (gunicorn's master and workers: the process
session `revshare serve` starts), the database server (the PostgreSQL cluster's postmaster and its
children; on SQLite that work is in the workers) and the load generator (this process). A process
that ends during the series (an autovacuum worker) is counted through its parent's time for its
reaped children. The sum, a POST's CPU, bounds the rate: the machine's cores, busy with nothing
else, would serve at most cores / CPU a POST.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from typing import Callable, NamedTuple

from ledger.db import Database
from ledger.keys import create_key

from bench import program
from bench.cpu import Process, group_s, postmaster_pid, processes
from bench.importing import REPO_ROOT, event_data, revshare_command
from bench.report import Row, median, percentile

HOST = "127.0.0.1"
WORKERS = 2
CLIENT_THREADS = 4
START_TIMEOUT_S = 60
STOP_GRACE_S = 20
REQUEST_TIMEOUT_S = 30
RATE_TARGET = 1_000
P99_MS_MAX = 50.0
_STATUS_LINE = re.compile(rb"HTTP/1\.[01] (\d{3}) ")
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length: *(\d+)", re.IGNORECASE)


class Cpu(NamedTuple):
    """CPU seconds used by each group of processes over one series."""

    server: float
    database: float
    client: float

    @property
    def total(self) -> float:
        return self.server + self.database + self.client


class Series(NamedTuple):
    requests: int
    seconds: float
    latencies_ms: list[float]
    failures: int
    cpu: Cpu | None = None  # None where /proc is not there to read


def _cpu(before: dict[int, Process] | None, after: dict[int, Process] | None, client_s: float,
         server_pid: int, database_pid: int | None) -> Cpu | None:
    if before is None or after is None:
        return None

    def used(roots: Callable[[int, Process], bool]) -> float:
        return group_s(after, roots) - group_s(before, roots)

    server = used(lambda pid, process: process.session == server_pid)
    database = 0.0 if database_pid is None else used(lambda pid, process: pid == database_pid)
    return Cpu(server, database, client_s)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _message(method: str, path: str, body: bytes | None, headers: dict) -> bytes:
    """The bytes of one HTTP/1.1 request that asks the server to close the connection after it."""
    head = [f"{method} {path} HTTP/1.1", f"Host: {HOST}", "Connection: close",
            *(f"{name}: {value}" for name, value in headers.items())]
    if body is not None:
        head.append(f"Content-Length: {len(body)}")
    return "\r\n".join([*head, "", ""]).encode("latin-1") + (body or b"")


def _exchange(port: int, message: bytes) -> int:
    """Send one request on a new connection and read its response to the end: its status, or 0 when
    the response is not whole (no status line, or a body shorter or longer than its Content-Length)."""
    with socket.create_connection((HOST, port), timeout=REQUEST_TIMEOUT_S) as sock:
        sock.sendall(message)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    response = b"".join(chunks)
    head, separator, body = response.partition(b"\r\n\r\n")
    match = _STATUS_LINE.match(head)
    length = _CONTENT_LENGTH.search(head)
    if not (separator and match and length and int(length.group(1)) == len(body)):
        return 0
    return int(match.group(1))


def _load(port: int, requests: list[tuple[bytes, int]], deadline_s: float, server_pid: int,
          database_pid: int | None) -> Series:
    """Send every request (its bytes, the status expected) once, over CLIENT_THREADS threads, stopping
    at the deadline; with the CPU each group of processes used meanwhile."""
    counter = itertools.count()
    latencies: list[float] = []
    failures = [0]
    lock = threading.Lock()
    stop_at = time.perf_counter() + deadline_s

    def worker() -> None:
        mine: list[float] = []
        failed = 0
        try:
            while time.perf_counter() < stop_at:
                index = next(counter)
                if index >= len(requests):
                    break
                message, expected = requests[index]
                started = time.perf_counter()
                try:
                    status = _exchange(port, message)
                except OSError:
                    status = 0
                mine.append((time.perf_counter() - started) * 1000)
                failed += status != expected
        finally:
            with lock:
                latencies.extend(mine)
                failures[0] += failed

    before = processes()
    client_started = time.process_time()
    started = time.perf_counter()
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(CLIENT_THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=deadline_s + REQUEST_TIMEOUT_S)
    seconds = time.perf_counter() - started
    cpu = _cpu(before, processes(), time.process_time() - client_started, server_pid, database_pid)
    return Series(len(latencies), seconds, latencies, failures[0], cpu)


def _wait_until_up(port: int, server: subprocess.Popen) -> None:
    give_up = time.perf_counter() + START_TIMEOUT_S
    while time.perf_counter() < give_up:
        assert server.poll() is None, f"revshare serve exited with {server.returncode}"
        try:
            if _exchange(port, _message("GET", "/v1/health", None, {})) == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"revshare serve did not answer on port {port} within {START_TIMEOUT_S} s")


def _stop(server: subprocess.Popen) -> None:
    if server.poll() is not None:
        return
    os.killpg(server.pid, signal.SIGTERM)  # gunicorn's master (our child) and its workers: this run's group
    try:
        server.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=STOP_GRACE_S)


def measure(site, request_count: int, partner_count: int, customer_count: int, deadline_s: float) -> dict:
    url = site.new("http")
    database = Database(url)
    try:
        with database.transaction() as session:
            seeded = program.seed(session, partner_count, customer_count)
            _, key = create_key(session, "billing")
    finally:
        database.dispose()
    events = program.paid_events(seeded, request_count, month_offset=3, prefix="http")
    auth = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    posts = [(_message("POST", "/v1/revenue-events", json.dumps(event_data(e)).encode(), auth), 201) for e in events]
    health = [(_message("GET", "/v1/health", None, {}), 200)] * request_count
    port = _free_port()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("REVSHARE_")}
    environment.update(REVSHARE_DATABASE_URL=url, REVSHARE_LOG_LEVEL="WARNING")
    command = [*revshare_command(), "serve", "--host", HOST, "--port", str(port), "--workers", str(WORKERS)]
    server = subprocess.Popen(command, env=environment, cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_until_up(port, server)
        database_pid = postmaster_pid(site)
        return {"post": _load(port, posts, deadline_s, server.pid, database_pid),
                "health": _load(port, health, deadline_s, server.pid, database_pid)}
    finally:
        _stop(server)
        site.drop(url)


def rows_for(engine_name: str, results: dict, *, quick: bool) -> list[Row]:
    """The rate and latency rows. Latencies and the rate count every request sent, failed ones too
    (a refused connection can answer faster than a posting), so each verdict also requires that no
    request failed: a series with a failure is a MISS whatever its figures."""
    post, health = results["post"], results["health"]
    rate = post.requests / post.seconds
    health_rate = health.requests / health.seconds
    p50, p99 = median(post.latencies_ms), percentile(post.latencies_ms, 0.99)
    clean = not post.failures
    failed = (f"{post.failures:,} of {post.requests:,} failed (counted in the figures): every verdict MISS"
              if post.failures else "none failed; a failure fails every verdict")
    health_failed = f", {health.failures:,} failed" if health.failures else ""
    return [
        Row(f"http: POST /v1/revenue-events, gunicorn {WORKERS} workers", engine_name, rate, "events/s",
            f">= {RATE_TARGET:,}", rate >= RATE_TARGET and clean, health_rate, rate / health_rate,
            note=f"{post.requests:,} single-event POSTs, {CLIENT_THREADS} client threads, {failed}; baseline = "
                 f"GET /v1/health on the same server ({health.requests:,}, p50 "
                 f"{median(health.latencies_ms):.1f} ms{health_failed}), ratio = rate / baseline"
                 + ("; quick" if quick else "")),
        Row("http: POST latency p50", engine_name, p50, "ms", "-", None, note="same requests, failed ones included"),
        Row("http: POST latency p99", engine_name, p99, "ms", f"< {P99_MS_MAX:g} ms", p99 < P99_MS_MAX and clean,
            note=f"same requests, failed ones included; {failed}"),
        *_cpu_rows(engine_name, post, health),
    ]


def _cpu_rows(engine_name: str, post: Series, health: Series) -> list[Row]:
    if post.cpu is None or health.cpu is None or not post.requests or not health.requests:
        return []
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    per_post_ms = post.cpu.total * 1000 / post.requests
    per_health_ms = health.cpu.total * 1000 / health.requests
    parts = ", ".join(f"{name} {seconds * 1000 / post.requests:.2f}" for name, seconds in
                      (("server", post.cpu.server), ("database", post.cpu.database), ("client", post.cpu.client)))
    return [Row("http: CPU a POST, all processes", engine_name, per_post_ms, "ms", "-", None,
                note=f"{parts} ms (a health GET: {per_health_ms:.2f}); {cores} cores would serve at most "
                     f"{cores * 1000 / per_post_ms:,.0f} POSTs/s")]
