"""`revshare keys create|revoke|list` and `revshare serve` (argument handling, the gunicorn configuration, and
one real gunicorn started briefly on a free loopback port)."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli import server
from cli.main import main
from ledger.keys import Principal, authenticate

REVSHARE = Path(sys.executable).with_name("revshare")


def run(args: list[str], database_url: str):
    return CliRunner().invoke(main, args, env={"REVSHARE_DATABASE_URL": database_url}, catch_exceptions=False)


def test_keys_create_prints_the_key_alone_on_its_last_line(database):
    result = run(["keys", "create", "--role", "finance"], database.url)
    assert result.exit_code == 0, result.output
    key = result.output.strip().splitlines()[-1]
    with database.reader() as session:
        principal = authenticate(session, key)
    assert principal is not None and (principal.role, principal.partner_id) == ("finance", None)
    assert principal.key_id in result.output


def test_keys_create_binds_a_partner_key_to_its_partner(database):
    result = run(["keys", "create", "--role", "partner", "--partner", "p1"], database.url)
    assert result.exit_code == 0, result.output
    with database.reader() as session:
        principal = authenticate(session, result.output.strip().splitlines()[-1])
    assert principal == Principal(principal.key_id, "partner", "p1")


@pytest.mark.parametrize("args, message", [
    (["--role", "partner"], "error: --partner: is required"), (["--role", "finance", "--partner", "p1"], "--partner"),
    (["--role", "root"], "root"), (["--role", "partner", "--partner", "a:b"], "--partner"),
])
def test_keys_create_refuses_a_bad_role_or_binding_with_exit_code_2(sqlite_database, args, message):
    result = run(["keys", "create", *args], sqlite_database.url)
    assert result.exit_code == 2
    assert message in result.output


def test_keys_revoke_stops_a_key_names_an_unknown_one_and_repeats_as_already_revoked(database):
    created = run(["keys", "create", "--role", "finance"], database.url).output.strip().splitlines()
    key, key_id = created[-1], created[0].removeprefix("id: ")
    result = run(["keys", "revoke", key_id, "--reason", "leaked"], database.url)
    assert result.exit_code == 0 and result.output.startswith(f"revoked: {key_id} at "), result.output
    with database.reader() as session:
        assert authenticate(session, key) is None
    again = run(["keys", "revoke", key_id], database.url)
    assert again.exit_code == 0 and again.output == result.output.replace("revoked:", "already revoked:", 1)
    unknown = run(["keys", "revoke", "key_nobody"], database.url)
    assert unknown.exit_code == 2 and "API key 'key_nobody' does not exist" in unknown.output
    for reason in ("x" * 501, " "):
        refused = run(["keys", "revoke", key_id, "--reason", reason], database.url)
        assert refused.exit_code == 2 and "--reason" in refused.output


def test_keys_list_shows_each_key_s_role_and_revocation_but_no_key_and_revoke_takes_the_key_itself(database):
    made = [run(["keys", "create", *args], database.url).output.strip().splitlines()
            for args in (["--role", "finance"], ["--role", "partner", "--partner", "p1"])]
    (finance_id, finance_key), (partner_id, partner_key) = [(m[0].removeprefix("id: "), m[-1]) for m in made]
    revoked = run(["keys", "revoke", partner_key, "--reason", "leaked\nin a ticket"], database.url)  # no id kept
    assert revoked.exit_code == 0 and revoked.output.startswith(f"revoked: {partner_id} at "), revoked.output
    with database.reader() as session:
        assert authenticate(session, partner_key) is None and authenticate(session, finance_key) is not None
    listed = run(["keys", "list"], database.url)
    assert listed.exit_code == 0, listed.output
    lines = {line.split()[0]: line for line in listed.output.splitlines()}
    assert "  finance  created " in lines[finance_id] and "revoked" not in lines[finance_id]
    assert "  partner (p1)  created " in lines[partner_id] and lines[partner_id].endswith(": leaked in a ticket")
    assert finance_key not in listed.output and partner_key not in listed.output
    unknown = run(["keys", "revoke", "rsk_" + "x" * 43], database.url)
    assert unknown.exit_code == 2 and "no API key of this service is that key" in unknown.output


@pytest.fixture
def started(monkeypatch):
    calls = []
    monkeypatch.setattr(server, "run", calls.append)
    return calls


def test_serve_defaults_to_two_workers_on_loopback_port_8000(sqlite_database, started):
    assert run(["serve"], sqlite_database.url).exit_code == 0
    [options] = started
    options.pop("control_socket_disable", None)  # where gunicorn has one (test_the_gunicorn_configuration_...)
    assert options == {"bind": "127.0.0.1:8000", "workers": 2, "worker_class": "sync", "loglevel": "info",
                       "proc_name": "revshare"}


def test_serve_takes_host_port_and_workers(sqlite_database, started):
    assert run(["serve", "--host", "0.0.0.0", "--port", "9001", "--workers", "5"], sqlite_database.url).exit_code == 0
    assert (started[0]["bind"], started[0]["workers"]) == ("0.0.0.0:9001", 5)


def test_serve_brackets_an_ipv6_host(sqlite_database, started):
    assert run(["serve", "--host", "::1"], sqlite_database.url).exit_code == 0
    assert started[0]["bind"] == "[::1]:8000"


@pytest.mark.parametrize("args", [["--port", "70000"], ["--port", "http"], ["--workers", "0"]])
def test_serve_refuses_bad_arguments_with_exit_code_2(sqlite_database, started, args):
    assert run(["serve", *args], sqlite_database.url).exit_code == 2
    assert started == []


def test_the_gunicorn_configuration_is_accepted_by_gunicorn():
    options = server.gunicorn_options(host="127.0.0.1", port=8123, workers=3, log_level="WARNING")
    config = server.Server(options).cfg
    assert (config.bind, config.workers, config.loglevel) == (["127.0.0.1:8123"], 3, "warning")
    # One control socket per host user, which every instance would share: off, where gunicorn has one.
    assert getattr(config, "control_socket_disable", True) is True


def test_the_command_line_does_not_import_flask():
    code = "import sys, cli.main; assert 'flask' not in sys.modules, 'flask imported'; print('ok')"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(url: str, *, headers: dict | None = None, seconds: float = 20.0) -> tuple[int, bytes]:
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=2) as response:
                return response.status, response.read()
        except OSError:  # refused, reset or timed out (URLError is an OSError): not up yet
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_serve_runs_gunicorn_answering_on_the_given_port(sqlite_database):
    key = run(["keys", "create", "--role", "finance"], sqlite_database.url).output.strip().splitlines()[-1]
    port = free_port()
    environment = {name: value for name, value in os.environ.items() if not name.startswith("REVSHARE_")}
    environment["REVSHARE_DATABASE_URL"] = sqlite_database.url
    process = subprocess.Popen([str(REVSHARE), "serve", "--port", str(port), "--workers", "1"], env=environment,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd="/")
    try:
        assert wait_for(f"http://127.0.0.1:{port}/v1/health") == (200, b'{"status":"ok"}\n')
        status, _ = wait_for(f"http://127.0.0.1:{port}/v1/transactions", headers={"Authorization": f"Bearer {key}"})
        assert status == 200
    finally:
        process.send_signal(signal.SIGTERM)
        _, errors = process.communicate(timeout=30)
    assert process.returncode == 0, errors.decode()[-2000:]
