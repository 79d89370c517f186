"""`revshare keys create|revoke|list` and `revshare serve` (argument handling, the gunicorn configuration, and
real gunicorns started briefly on free loopback ports: answering, refusing as problem+json, dropping stalled clients)."""

import contextlib
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import types
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli import server
from cli.main import main
from ledger.keys import Principal, authenticate
from tests.api.conftest import enroll
from tests.conftest import new_sqlite_url

REVSHARE = Path(sys.executable).with_name("revshare")
REPOSITORY = Path(__file__).resolve().parents[2]


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
    enroll(database)
    result = run(["keys", "create", "--role", "partner", "--partner", "p1"], database.url)
    assert result.exit_code == 0, result.output
    with database.reader() as session:
        principal = authenticate(session, result.output.strip().splitlines()[-1])
    assert principal == Principal(principal.key_id, "partner", "p1")


@pytest.mark.parametrize("args, message", [
    (["--role", "partner"], "error: --partner: is required"), (["--role", "finance", "--partner", "p1"], "--partner"),
    (["--role", "root"], "root"), (["--role", "partner", "--partner", "a:b"], "--partner"),
    (["--role", "partner", "--partner", "nobody"], "error: --partner: partner 'nobody' does not exist"),
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


@pytest.mark.parametrize("args, named", [
    (["keys", "revoke", "KEY_ID", "--reason", "caf\udce9"], "'--reason'"),
    (["keys", "revoke", "key_\udce9"], "'KEY'"),
    (["keys", "revoke", "rsk_\udce9"], "'KEY'"),
    (["keys", "create", "--role", "partner", "--partner", "p\udce9"], "'--partner'"),
    (["statement", "caf\udce9", "--period", "2026-01"], "'PARTNER_ID'"),
])
def test_an_argument_holding_a_byte_that_is_not_utf8_exits_2_naming_it_and_changes_nothing(database, args, named):
    # Bytes that are not UTF-8 (a Latin-1 terminal), which Python's argv holds as lone surrogates: the
    # database driver could not send them, and the command stopped with its traceback, exit 1.
    enroll(database)
    key_id = run(["keys", "create", "--role", "finance"], database.url).output.strip().splitlines()[0][len("id: "):]
    result = run([key_id if arg == "KEY_ID" else arg for arg in args], database.url)
    assert result.exit_code == 2, result.output
    assert f"Error: Invalid value for {named}: not UTF-8 text: byte 0xe9 at character " in result.output
    listed = run(["keys", "list"], database.url).output
    assert len(listed.splitlines()) == 1 and "revoked" not in listed, listed


def test_keys_list_shows_each_key_s_role_and_revocation_but_no_key_and_revoke_takes_the_key_itself(database):
    enroll(database)
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


@pytest.mark.parametrize("pasted", [[" {key}"], ["{key} "], ["{key}\t"], ["\t {key} "], ["Bearer {key}"],
                                    ["bearer  {key} \t"], ["Bearer", "{key}"]])
def test_keys_revoke_takes_the_key_as_a_request_s_header_gives_it(database, pasted):
    # As HTTP takes it: a key pasted with a space after it was "no API key of this service", and
    # stayed valid; one with a space before it, or after `Bearer `, was printed back whole as an id,
    # and `Bearer` and the key as two arguments (pasted unquoted) by click's "unexpected extra argument".
    made = run(["keys", "create", "--role", "finance"], database.url).output.strip().splitlines()
    key, key_id = made[-1], made[0].removeprefix("id: ")
    revoked = run(["keys", "revoke", *(argument.format(key=key) for argument in pasted)], database.url)
    assert revoked.exit_code == 0 and revoked.output.startswith(f"revoked: {key_id} at "), revoked.output
    with database.reader() as session:
        assert authenticate(session, key) is None


def test_keys_revoke_refusing_what_holds_a_key_does_not_show_it(database):
    key = run(["keys", "create", "--role", "finance"], database.url).output.strip().splitlines()[-1]
    for arguments in ([f"x {key}"], [f"Bearer: {key}"], [f"{key}\n"], [f"Basic {key}"], ["Basic", key], [key, key]):
        refused = run(["keys", "revoke", *arguments], database.url)
        assert refused.exit_code == 2 and key[len("rsk_"):] not in refused.output, refused.output
        assert "no API key of this service is that key" in refused.output
    with database.reader() as session:
        assert authenticate(session, key) is not None


def test_keys_list_shows_a_reasons_terminal_escapes_and_does_not_run_them(database):
    """A revocation's reason of "cursor up, delete line" hid the key listed before it on a terminal:
    an admin key could make a key and hide it from the list an operator reads."""
    made = run(["keys", "create", "--role", "billing"], database.url).output.strip().splitlines()
    revoked = run(["keys", "revoke", made[-1], "--reason", "rotated\x1b[1A\r\x1b[M\x07"], database.url)
    assert revoked.exit_code == 0, revoked.output
    listed = run(["keys", "list"], database.url)
    assert listed.exit_code == 0 and "\x1b" not in listed.output and "\x07" not in listed.output
    assert listed.output.rstrip("\n").endswith(": rotated\\x1b[1A \\x1b[M\\x07"), listed.output


@pytest.fixture
def started(monkeypatch):
    calls = []
    monkeypatch.setattr(server, "run", calls.append)
    monkeypatch.setattr(server, "unbindable", lambda host, port: None)  # (its own test)
    return calls


def test_serve_defaults_to_two_workers_on_loopback_port_8000(sqlite_database, started):
    assert run(["serve"], sqlite_database.url).exit_code == 0
    [options] = started
    options.pop("control_socket_disable", None)  # where gunicorn has one (test_the_gunicorn_configuration_...)
    assert options == {"bind": "127.0.0.1:8000", "workers": 2, "worker_class": "cli.server.Worker",
                       "loglevel": "info", "proc_name": "revshare"}


def test_serve_takes_host_port_and_workers(sqlite_database, started):
    assert run(["serve", "--host", "0.0.0.0", "--port", "9001", "--workers", "5"], sqlite_database.url).exit_code == 0
    assert (started[0]["bind"], started[0]["workers"]) == ("0.0.0.0:9001", 5)


def test_serve_brackets_an_ipv6_host(sqlite_database, started):
    assert run(["serve", "--host", "::1"], sqlite_database.url).exit_code == 0
    assert started[0]["bind"] == "[::1]:8000"


@pytest.mark.parametrize("args", [["--port", "70000"], ["--port", "http"], ["--workers", "0"],
                                  ["--host", "h\udcffst"]])  # a byte that is not UTF-8, as Python holds it
def test_serve_refuses_bad_arguments_with_exit_code_2(sqlite_database, started, args):
    assert run(["serve", *args], sqlite_database.url).exit_code == 2
    assert started == []


def test_serve_on_an_address_it_cannot_listen_on_exits_2_naming_it(sqlite_database, monkeypatch):
    calls = []
    monkeypatch.setattr(server, "run", calls.append)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        refused = run(["serve", "--port", str(port)], sqlite_database.url)
    assert refused.exit_code == 2 and calls == []
    assert f"error: cannot listen on 127.0.0.1 port {port}: Address already in use: stop what listens there, or " \
           "give another --port" in refused.output
    assert run(["serve", "--port", str(port)], sqlite_database.url).exit_code == 0 and len(calls) == 1  # free again
    elsewhere = run(["serve", "--host", "192.0.2.1"], sqlite_database.url)  # an address of no host here
    assert elsewhere.exit_code == 2 and "error: cannot listen on 192.0.2.1 port 8000: Cannot assign requested" in (
        elsewhere.output) and len(calls) == 1
    assert "give an address of this machine's as --host" in elsewhere.output and "stop what" not in elsewhere.output
    bracketed = run(["serve", "--host", "[::1]"], sqlite_database.url)  # as in a URL: a name that resolves nowhere
    assert bracketed.exit_code == 2 and len(calls) == 1
    assert "error: cannot listen on [::1] port 8000: give an IPv6 address without brackets: --host ::1" in (
        bracketed.output)
    unencodable = run(["serve", "--host", "\u00e9..x"], sqlite_database.url)  # IDNA refuses the empty label
    assert unencodable.exit_code == 2 and len(calls) == 1
    assert "error: cannot listen on \u00e9..x port 8000: not a host name: encoding of hostname failed" in (
        unencodable.output)
    empty = run(["serve", "--host", ""], sqlite_database.url)  # `--host "$HOST"`, unset: every interface
    assert empty.exit_code == 2 and len(calls) == 1
    assert 'error: cannot listen on "" port 8000: an empty host listens on every interface' in empty.output


@pytest.mark.parametrize("errno_, hint", [
    (errno.EACCES, "a port below 1024 takes privileges; give another --port"),
    (errno.EADDRINUSE, "stop what listens there, or give another --port"),
    (errno.EADDRNOTAVAIL, "give an address of this machine's as --host (127.0.0.1, 0.0.0.0 for all of them)"),
    (errno.EAFNOSUPPORT, "give another --host or --port"),
])
def test_serve_s_refusal_of_an_address_hints_what_fits_its_reason(monkeypatch, errno_, hint):
    # A privileged port refused to a user was told to give another --host.
    class Refusing(socket.socket):
        def bind(self, address):
            raise OSError(errno_, os.strerror(errno_))

    monkeypatch.setattr(server.socket, "socket", Refusing)
    assert server.unbindable("127.0.0.1", 80) == f"{os.strerror(errno_)}: {hint}"


def test_serve_s_refusal_of_a_name_that_resolves_nowhere_asks_for_another_host(monkeypatch):
    class Unresolved(socket.socket):  # as binding to a name no resolver knows fails, without asking one
        def bind(self, address):
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(server.socket, "socket", Unresolved)
    assert server.unbindable("no-such-host.invalid", 8000) == (
        "Name or service not known: give an address of this machine's as --host (127.0.0.1, 0.0.0.0 for all of them)")


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


def test_gunicorn_started_on_its_own_stops_on_a_database_behind_the_code_and_serves_it_once_migrated(tmp_path):
    # `gunicorn wsgi:app` (the README's entry point) served and posted on a database at 0049 or
    # 0040, which `revshare serve` refuses: no revision was checked but by the command line.
    from ledger.migrate import current_revision, upgrade

    url = f"sqlite:///{tmp_path / 'behind.db'}"
    upgrade(url, "0040")
    environment = {name: value for name, value in os.environ.items() if not name.startswith("REVSHARE_")}
    command = [str(REVSHARE.with_name("gunicorn")), "--bind", f"127.0.0.1:{free_port()}", "--workers", "1", "wsgi:app"]
    stopped = subprocess.run(command, env={**environment, "REVSHARE_DATABASE_URL": url}, cwd=REPOSITORY,
                             capture_output=True, timeout=120)
    assert stopped.returncode != 0 and "is at revision 0040, the service's latest is" in stopped.stderr.decode()
    assert "run `revshare db upgrade` first" in stopped.stderr.decode() and current_revision(url) == "0040"
    missing = tmp_path / "typo.db"  # read for its revision, a path typed wrong was made an empty database
    stopped = subprocess.run(command, env={**environment, "REVSHARE_DATABASE_URL": f"sqlite:///{missing}"},
                             cwd=REPOSITORY, capture_output=True, timeout=120)
    assert stopped.returncode != 0 and f"the file '{missing}' does not exist" in stopped.stderr.decode()
    assert not missing.exists()
    upgrade(url)
    port = free_port()
    command[2] = f"127.0.0.1:{port}"
    process = subprocess.Popen(command, env={**environment, "REVSHARE_DATABASE_URL": url}, cwd=REPOSITORY,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert wait_for(f"http://127.0.0.1:{port}/v1/health") == (200, b'{"status":"ok"}\n')
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=60)


def test_a_worker_started_while_the_database_cannot_be_reached_boots():
    # The revision read at each worker's start failed, the worker failed to boot, and gunicorn
    # stopped for good: a worker started anew (after --max-requests, a timeout) while PostgreSQL
    # restarted took the whole service down, where it answers 503s until the database is back.
    environment = {name: value for name, value in os.environ.items() if not name.startswith("REVSHARE_")}
    environment["REVSHARE_DATABASE_URL"] = f"postgresql://revshare@127.0.0.1:{free_port()}/revshare"  # none listens
    port = free_port()
    process = subprocess.Popen([str(REVSHARE.with_name("gunicorn")), "--bind", f"127.0.0.1:{port}", "--workers", "1",
                                "wsgi:app"], env=environment, cwd=REPOSITORY, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    try:
        assert wait_for(f"http://127.0.0.1:{port}/v1/health") == (200, b'{"status":"ok"}\n')
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=60)


@contextlib.contextmanager
def serving(database_url: str, *, workers: int = 1, client_idle_s: float = server.CLIENT_IDLE_S):
    """`revshare serve` of this checkout (not the installed script's) on a free port, until the block
    ends; yields the port and a list that holds the server's stderr once it has stopped. Its workers
    drop a client idle `client_idle_s` (`cli.server.CLIENT_IDLE_S`, set in the process gunicorn's
    workers are forked from)."""
    port = free_port()
    environment = {name: value for name, value in os.environ.items() if not name.startswith("REVSHARE_")}
    environment["REVSHARE_DATABASE_URL"] = database_url
    command = [sys.executable, "-c", "import sys; from cli import server; from cli.main import main; "
               f"server.CLIENT_IDLE_S = {client_idle_s!r}; sys.exit(main())",
               "serve", "--port", str(port), "--workers", str(workers)]
    process = subprocess.Popen(command, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               cwd=REPOSITORY)
    errors: list[str] = []
    try:
        wait_for(f"http://127.0.0.1:{port}/v1/health")
        yield port, errors
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
        errors.append(stderr.decode())


@pytest.fixture(scope="module")
def served(sqlite_template, tmp_path_factory) -> int:
    """The port of one `revshare serve` shared by the tests of this module that only send it requests."""
    with serving(new_sqlite_url(sqlite_template, tmp_path_factory.mktemp("served"))) as (port, _):
        yield port


def raw_exchange(port: int, request: bytes, *, then=None) -> bytes:
    """Send `request` on a connection of its own and read the answer until the server closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
        sock.sendall(request)
        if then is not None:
            then()
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def problem_of(answer: bytes) -> tuple[int, dict]:
    """The status of a raw HTTP answer and its body, which must be a problem+json document."""
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in header_lines)}
    assert headers.get("content-type") == "application/problem+json", answer[:400]
    assert headers.get("cache-control") == "no-store", answer[:400]
    problem = json.loads(body)
    status = int(status_line.split()[1])
    assert set(problem) == {"type", "title", "status", "detail"} and problem["status"] == status, problem
    assert problem["type"].startswith("urn:revshare:problem:") and problem["title"] and problem["detail"], problem
    return status, problem


@pytest.mark.parametrize("request_bytes, status", [
    (b"GET /v1/partners?" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    (b"GET /v1/health HTTP/1.1\r\nHost: x\r\nCookie: " + b"a" * 9000 + b"\r\n\r\n", 431),
    (b"GET /v1/health HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: 1\r\n" % n for n in range(120)) + b"\r\n", 431),
    (b"GET /v1/health HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n", 400),
    (b"GET /v1/health HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400),
    (b"NOT HTTP\r\n\r\n", 400),
    (b"GET /v1/health HTTP/1.1\r\nHost: x\r\nExpect: the-moon\r\n\r\n", 417),
], ids=["request-line-too-long", "header-too-large", "too-many-headers", "bad-header-name", "two-lengths",
        "not-http", "unmeetable-expect"])
def test_what_gunicorn_refuses_before_the_app_is_a_problem_json_too(served, request_bytes, status):
    assert problem_of(raw_exchange(served, request_bytes))[0] == status


def test_a_refused_header_line_that_may_hold_a_key_is_named_neither_in_the_log_nor_in_the_answer(sqlite_database):
    # A line without a colon (a key sent as a line of its own) was gunicorn's "Invalid HTTP Header:
    # 'rsk_...'", whole, at WARNING in the log and in the 400's detail.
    key = run(["keys", "create", "--role", "finance"], sqlite_database.url).output.strip().splitlines()[-1]
    with serving(sqlite_database.url) as (port, errors):
        lines = (key.encode(), b"Bearer " + key.encode(), key[8:].encode())  # whole, or its tail after a split
        answers = [raw_exchange(port, b"GET /v1/health HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + key.encode()
                                + b"\r\n" + line + b"\r\n\r\n") for line in lines]
        trailer = raw_exchange(port, b"POST /v1/holds/release HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                               + key.encode() + b"\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked"
                               + b"\r\n\r\n2\r\n{}\r\n0\r\n" + key.encode() + b"\r\n\r\n")
        named = raw_exchange(port, b"GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Check: a\x00b\r\n\r\n")
    for answer in (*answers, trailer):
        status, problem = problem_of(answer)
        assert status == 400 and key[8:] not in problem["detail"] and "not shown" in problem["detail"], problem
    assert problem_of(named)[1]["detail"] == "Invalid HTTP Header: 'X-CHECK'"  # a header's name is still named
    assert errors[0].count("not shown") == len(lines) and key[8:] not in errors[0], errors[0][-2000:]


def test_a_client_that_stops_sending_is_dropped_without_the_worker_being_killed(sqlite_database):
    """One worker: a client that sent half a request line and one that sent half a body held it until
    gunicorn's worker timeout killed it (twice, 30 s each), the second got gunicorn's HTML 500, and
    every other client waited. The worker now drops each after its idle limit, answers the second a
    408, and serves the next client."""
    key = run(["keys", "create", "--role", "finance"], sqlite_database.url).output.strip().splitlines()[-1]
    with serving(sqlite_database.url, client_idle_s=1.5) as (port, errors):  # 5 s in service
        half_line = socket.create_connection(("127.0.0.1", port), timeout=120)
        half_line.sendall(b"GET /v1/hea")
        half_body = (b"POST /v1/holds/release HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + key.encode()
                     + b"\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"at\"")
        answered = []
        stalled = raw_exchange(port, half_body, then=lambda: answered.append(
            wait_for(f"http://127.0.0.1:{port}/v1/health", seconds=120)))
        half_line.settimeout(120)
        assert half_line.recv(65536) == b""  # dropped: it never sent a request to answer
        half_line.close()
        assert answered == [(200, b'{"status":"ok"}\n')]
        status, problem = problem_of(stalled)
        assert status == 408 and "stopped arriving" in problem["detail"]
    assert "WORKER TIMEOUT" not in errors[0], errors[0][-2000:]
    # One line for the client dropped, not gunicorn's traceback at ERROR ("Socket error processing request.")
    assert "Traceback" not in errors[0] and "ERROR" not in errors[0], errors[0][-2000:]
    assert errors[0].count("[INFO] Dropped client ip=127.0.0.1: it sent nothing") == 1, errors[0][-2000:]


def client_and_peer(idle_s: float) -> tuple[server.ClientSocket, socket.socket]:
    """A worker's client socket with the idle limit `idle_s`, and its peer, on small buffers so that a
    large answer waits for the peer to read it."""
    ours, peer = socket.socketpair()
    client = server.ClientSocket(ours.family, ours.type, ours.proto, fileno=ours.detach())
    client.settimeout(idle_s)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return client, peer


def test_a_large_answer_to_a_client_reading_it_steadily_is_sent_whole_however_long_it_takes():
    """Python's `sendall` bounds the whole send by the socket's timeout: a 4 MiB answer read 16 KiB
    every 12 ms (about 3 s) was cut off at the idle limit, 0.5 s here (5 s in service; 0.5 s leaves
    room for a reader a loaded machine holds back a while)."""
    client, peer = client_and_peer(0.5)
    answer = bytes(range(256)) * 16_384  # 4 MiB
    received = bytearray()

    def read_steadily() -> None:
        while chunk := peer.recv(16_384):
            received.extend(chunk)
            time.sleep(0.012)

    reader = threading.Thread(target=read_steadily)
    reader.start()
    with client, peer:
        client.sendall(answer)
        client.shutdown(socket.SHUT_WR)
        reader.join(60)
    assert not reader.is_alive() and received == answer


def test_a_client_that_reads_nothing_of_a_large_answer_is_dropped_at_the_idle_limit():
    client, peer = client_and_peer(0.2)
    with client, peer, pytest.raises(TimeoutError):
        client.sendall(bytes(4 * 1024 * 1024))


def tcp_client_and_peer(idle_s: float) -> tuple[server.ClientSocket, socket.socket]:
    """A worker's client socket on loopback TCP with the idle limit `idle_s`, and its peer. Its send
    buffer is fixed at 1 MiB (Linux doubles it to 2 MiB), as Linux grows it for a client on its own."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        peer = socket.create_connection(listener.getsockname())
        accepted, _ = listener.accept()
    client = server.ClientSocket(accepted.family, accepted.type, accepted.proto, fileno=accepted.detach())
    client.settimeout(idle_s)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1024 * 1024)
    return client, peer


def test_a_large_answer_over_tcp_to_a_client_reading_it_steadily_is_sent_whole_and_beats_the_heartbeat():
    """Linux reports a TCP socket writable again only once a third of its send buffer is free: a
    4.5 MB statement to a client reading 160 KB every second, steadily, waited 7 s for its second
    piece and was cut off at the idle limit (5 s). Here a 4 MiB answer read 16 KiB every 25 ms
    waits about 1 s for room in a 2 MiB buffer, over an idle limit of 0.5 s. And a sync worker
    tells gunicorn's arbiter it lives only between requests: sending for longer than the worker
    timeout (30 s) got it killed mid-answer; each piece sent calls the worker's heartbeat now."""
    client, peer = tcp_client_and_peer(0.5)
    heartbeats = []
    client.progress = lambda: heartbeats.append(1)
    answer = bytes(range(256)) * 16_384  # 4 MiB
    received = bytearray()

    def read_steadily() -> None:
        with contextlib.suppress(ConnectionResetError):  # a failed send closes the client with data unread
            while chunk := peer.recv(16_384):
                received.extend(chunk)
                time.sleep(0.025)

    reader = threading.Thread(target=read_steadily)
    reader.start()
    try:
        with client:  # closed when a send fails, which ends the reader too
            client.sendall(answer)
    finally:
        reader.join(60)
        peer.close()
    assert not reader.is_alive() and received == answer
    assert len(heartbeats) > 1


def test_a_client_over_tcp_that_stops_reading_is_dropped_at_the_idle_limit():
    client, peer = tcp_client_and_peer(0.2)
    with client, peer, pytest.raises(TimeoutError):
        client.sendall(bytes(1000))
        assert peer.recv(1000)  # read a little, then nothing
        client.sendall(bytes(16 * 1024 * 1024))


def test_the_worker_gives_each_client_socket_its_heartbeat_and_idle_limit():
    from gunicorn.config import Config

    worker = server.Worker(0, os.getpid(), [], None, 30, Config(), None)
    handled = []
    worker.handle = lambda listener, client, addr: handled.append(client)
    with contextlib.closing(worker.tmp), socket.create_server(("127.0.0.1", 0)) as listener, \
            socket.create_connection(listener.getsockname()):
        worker.accept(listener)
    [client] = handled
    with client:
        assert client.gettimeout() == server.CLIENT_IDLE_S and client.progress == worker.notify


def test_each_piece_of_a_request_received_beats_the_worker_s_heartbeat():
    """A 10,000-event batch (2 MB) sent steadily at 53 KB/s took 37 s to arrive: gunicorn's worker
    timeout (30 s) killed the worker midway (WORKER TIMEOUT), the client's pipe broke, and the batch
    was lost. Each piece received is a heartbeat now, as each piece sent is."""
    client, peer = client_and_peer(0.2)
    heartbeats = []
    client.progress = lambda: heartbeats.append(1)
    with client, peer:
        for piece in (b"POST / HTTP/1.1\r\n", b"Host: x\r\n"):
            peer.sendall(piece)
            assert client.recv(100) == piece
    assert len(heartbeats) == 2


def test_the_worker_log_writes_a_client_dropped_idle_as_one_line_and_other_errors_with_their_traceback():
    records = []

    class Log:
        def info(self, msg, *args):
            records.append(("info", msg % args))

        def exception(self, msg, *args):
            records.append(("exception", msg % args, sys.exc_info()[0]))

    worker = types.SimpleNamespace(client_ip="192.0.2.7")
    log = server.IdleDropLog(Log(), worker)
    for error in (TimeoutError("timed out"), OSError(errno.EIO, "I/O error")):
        try:
            raise error
        except OSError:
            log.exception("Socket error processing request.")
    assert records == [
        ("info", "Dropped client ip=192.0.2.7: it sent nothing, or read nothing of its answer, for 5 s"),
        ("exception", "Socket error processing request.", OSError)]
    assert log.info == log._log.info  # the rest is gunicorn's logger's own


def recording_recv(client: server.ClientSocket) -> list[bytes | None]:
    """What each `recv` on `client` returned, None for a call that raised (a timeout)."""
    received: list[bytes | None] = []
    real = client.recv

    def recv(size: int, flags: int = 0) -> bytes:
        received.append(None)
        received[-1] = real(size, flags)
        return received[-1]

    client.recv = recv
    return received


def test_an_answered_request_read_to_its_end_is_closed_at_once_without_waiting_for_the_client():
    """Gunicorn 27 lingers after each answer, reading until the client closes (up to 2 s): two pooled
    clients that kept their connections open a moment held both workers. With the request read whole
    and nothing more sent, the connection is closed with no read at all; the client sees the end."""
    client, peer = client_and_peer(5.0)
    client.request_read_whole = True
    received = recording_recv(client)
    with peer:
        server.close_answered(client)
        assert client.fileno() == -1 and received == []
        peer.settimeout(5)
        assert peer.recv(100) == b""


def test_a_client_dropped_at_the_idle_limit_having_sent_nothing_is_closed_at_once():
    """One that sent nothing (a browser's preconnect) held its worker 2 s past the limit while
    gunicorn's close lingered for it to close."""
    client, peer = client_and_peer(0.05)
    with peer:
        with pytest.raises(TimeoutError):
            client.recv(100)
        received = recording_recv(client)
        server.close_answered(client)
        assert client.dropped_silent and client.fileno() == -1 and received == []
        peer.settimeout(5)
        assert peer.recv(100) == b""


def test_a_client_whose_body_paused_past_the_idle_limit_is_read_on_as_gunicorn_does():
    """Closed at once, the kernel reset the connection as the body went on, and a client such as
    Python's http.client met a broken pipe where it would read its 408."""
    client, peer = client_and_peer(0.05)
    with peer:
        peer.sendall(b'POST /v1/revenue-events HTTP/1.1\r\nContent-Length: 99\r\n\r\n{"id"')
        assert client.recv(4096)
        with pytest.raises(TimeoutError):
            client.recv(4096)
        received = recording_recv(client)
        peer.sendall(b': "the rest"}')
        peer.shutdown(socket.SHUT_WR)
        server.close_answered(client)
        assert not client.dropped_silent and b"".join(received) == b': "the rest"}' and received[-1] == b""


@pytest.mark.parametrize("read_whole, unread", [(True, b"the rest of a pipelined request"), (False, b""),
                                                (False, b"the body the app did not read")],
                         ids=["bytes-left-unread", "request-not-read-whole", "body-not-read"])
def test_a_connection_with_request_bytes_left_or_possibly_coming_lingers_as_gunicorn_does(read_whole, unread):
    """Closed with bytes unread, the kernel would answer the client with a reset, which may cut its
    answer short: gunicorn's close reads what the client still sends, until it closes its side."""
    client, peer = client_and_peer(5.0)
    client.request_read_whole = read_whole
    received = recording_recv(client)
    with peer:
        if unread:
            peer.sendall(unread)
        peer.shutdown(socket.SHUT_WR)  # the client is done sending: the lingering read sees its end
        server.close_answered(client)
        assert client.fileno() == -1 and b"".join(received) == unread and received[-1] == b""


def parsed_request(raw: bytes):
    """Gunicorn's parse of a request received on a socket (its body not read yet), and the peer."""
    from gunicorn import http
    from gunicorn.config import Config

    ours, peer = socket.socketpair()
    peer.sendall(raw)
    return next(http.get_parser(Config(), ours, ("127.0.0.1", 1))), ours, peer


@pytest.mark.parametrize("raw, read_whole_unread, read_whole_after", [
    (b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n", True, True),
    (b"POST /v1/holds/release HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}", False, True),
    (b"POST /v1/holds/release HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
     False, False),
], ids=["no-body", "a-body-of-stated-length", "chunked"])
def test_a_request_is_read_to_its_end_once_its_body_of_stated_length_was_all_read(raw, read_whole_unread,
                                                                                  read_whole_after):
    request, ours, peer = parsed_request(raw)
    with ours, peer:
        assert server.read_to_its_end(request) is read_whole_unread
        request.body.read()
        assert server.read_to_its_end(request) is read_whole_after


def test_a_served_answer_to_a_request_read_whole_ends_the_connection_at_once(sqlite_database):
    """Through a real worker: a client that read its answer to the end and kept its connection open
    finds it closed when it sends more (a reset), where a lingering worker would read what it sends
    for up to 2 s; the one worker serves the next client while that connection is still open."""
    key = run(["keys", "create", "--role", "finance"], sqlite_database.url).output.strip().splitlines()[-1]
    with serving(sqlite_database.url) as (port, _):
        for request in (b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n",
                        b"POST /v1/holds/release HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + key.encode()
                        + b"\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"):
            with socket.create_connection(("127.0.0.1", port), timeout=30) as pooled:
                pooled.sendall(request)
                answer = b""
                while chunk := pooled.recv(65536):
                    answer += chunk
                assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]
                with pytest.raises((ConnectionResetError, BrokenPipeError)):
                    for _ in range(10):  # the reset comes back as the bytes arrive; well within 2 s
                        pooled.sendall(b"more")
                        pooled.recv(100)
                        time.sleep(0.02)
                assert wait_for(f"http://127.0.0.1:{port}/v1/health") == (200, b'{"status":"ok"}\n')
