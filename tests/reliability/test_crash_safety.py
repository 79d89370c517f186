"""Crash safety over HTTP: gunicorn workers are SIGKILLed at random points while billing posts
revenue events; the client retries whatever did not get an answer, then re-sends everything. The
books (balances, every posting, every event's status) equal those of one clean run, and verify()
is clean. Both engines."""

from __future__ import annotations

import http.client
import json
import os
import random
import signal
import subprocess
import threading
import time

import pytest

from ledger import revenue
from ledger.db import Database
from ledger.keys import create_key
from ledger.verify import verify
from tests.api.test_cli import REVSHARE, free_port, wait_for
from tests.cli.test_cli import books
from tests.conftest import new_pg_url, new_sqlite_url, scaled
from tests.program import event_dict, monthly_events, seed

CUSTOMERS = [f"cust-{n:02d}" for n in range(30)]
KILLS = scaled(4)
MONTHS = scaled(3)  # of events posted while workers are killed
REQUEST_TIMEOUT_S = 10


def workers_of(master_pid: int) -> list[int]:
    children = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/stat") as stat:
                    if int(stat.read().rsplit(")", 1)[1].split()[1]) == master_pid:
                        children.append(int(pid))
            except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
                continue
    return children


def post(port: int, key: str, body: dict) -> int | None:
    """One POST on a fresh connection: its status, or None when the worker died under it."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT_S)
    try:
        connection.request("POST", "/v1/revenue-events", body=json.dumps(body),
                           headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
        return connection.getresponse().status
    except (ConnectionError, http.client.HTTPException, OSError):
        return None
    finally:
        connection.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def served_and_clean(request, sqlite_template, tmp_path):
    if request.param == "sqlite":
        urls = [new_sqlite_url(sqlite_template, tmp_path) for _ in range(2)]
    else:
        urls = [new_pg_url(request.getfixturevalue("pg_cluster")) for _ in range(2)]
    databases = [Database(url) for url in urls]
    for database in databases:
        with database.transaction() as session:
            seed(session, customer_ids=CUSTOMERS)
    with databases[0].transaction() as session:
        _, key = create_key(session, "billing")
    port = free_port()
    environment = {name: value for name, value in os.environ.items() if not name.startswith("REVSHARE_")}
    environment["REVSHARE_DATABASE_URL"] = urls[0]
    server = subprocess.Popen([str(REVSHARE), "serve", "--port", str(port), "--workers", "2"], env=environment,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/")
    try:
        wait_for(f"http://127.0.0.1:{port}/v1/health")
        yield databases, server, port, key
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
        for database in databases:
            database.dispose()


def test_killed_workers_and_a_full_resend_give_the_books_of_one_clean_run(served_and_clean):
    (served, clean), server, port, key = served_and_clean
    events = monthly_events(months=MONTHS, customer_ids=CUSTOMERS)
    bodies = [event_dict(event) for event in events]
    rng, killed = random.Random(11), []
    # Kill points are positions in the stream, not moments: a kill lands a few milliseconds after
    # its request leaves (in flight, or just answered), and every kill happens however fast the
    # server answers.
    kill_at = set(rng.sample(range(len(bodies)), KILLS))

    def kill_a_worker() -> None:
        give_up = time.monotonic() + 30
        while not (workers := workers_of(server.pid)) and time.monotonic() < give_up:
            time.sleep(0.01)  # gunicorn is replacing the last one killed
        if workers:
            victim = rng.choice(workers)
            os.kill(victim, signal.SIGKILL)
            killed.append(victim)

    unanswered = []
    for index, body in enumerate(bodies):
        killing = threading.Timer(rng.uniform(0, 0.02), kill_a_worker) if index in kill_at else None
        if killing is not None:
            killing.start()
        if post(port, key, body) is None:
            unanswered.append(body)
        if killing is not None:
            killing.join()
    deadline = time.monotonic() + 60
    while unanswered and time.monotonic() < deadline:  # retry until gunicorn has replaced its workers
        unanswered = [body for body in unanswered if post(port, key, body) is None]
        time.sleep(0.1)
    statuses = [post(port, key, body) for body in bodies]  # and then re-send everything
    with clean.transaction() as session:
        assert not any(isinstance(r, revenue.Refusal) for r in revenue.ingest(session, events))
    assert len(killed) == KILLS and unanswered == []
    assert set(statuses) == {201}  # every event answered once more, as a replay of its first outcome
    assert books(served) == books(clean)
    with served.reader() as session:
        assert verify(session).ok
