"""The SQLite files an operator handles (README, SQLite): a copy read where nothing may be written,
the writers' lock file beside the database, and a database path written percent-encoded in its URL."""

import fcntl
import os
import shlex
import shutil
import sqlite3
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import make_url, text
from sqlalchemy.exc import OperationalError

from cli.books import database_errors
from cli.main import main
from ledger import db
from ledger.db import Database, writer_lock_path
from ledger.keys import create_key
from ledger.migrate import upgrade
from ledger.trial_balance import trial_balance
from ledger.verify import verify
from tests.conftest import new_sqlite_url


REPOSITORY = Path(__file__).resolve().parents[2]


def invoke(url: str, *args: str):
    return CliRunner().invoke(main, list(args), env={"REVSHARE_DATABASE_URL": url})


def read_only_copy(template: str, tmp_path) -> str:
    """A copy taken out of WAL mode, as the README tells an auditor, opened read-only (`mode=ro`:
    what SQLite does with a file or directory this user may not write, root or not)."""
    path = new_sqlite_url(template, tmp_path)[len("sqlite:///"):]
    with sqlite3.connect(path) as connection:
        connection.execute("PRAGMA journal_mode=DELETE")
    connection.close()
    return f"sqlite:///file:{path}?mode=ro&uri=true"


def test_a_copy_this_process_may_only_read_is_read_not_refused_for_switching_it_to_wal(sqlite_template, tmp_path):
    # Every connection asked for `journal_mode=WAL`, a write on a database not in WAL mode: reading an
    # auditor's read-only copy failed with "attempt to write a readonly database" before any query.
    database = Database(read_only_copy(sqlite_template, tmp_path))
    try:
        with database.reader() as session:
            assert session.execute(text("PRAGMA journal_mode")).scalar() == "delete"
            assert verify(session).ok and trial_balance(session, before_us=None).balanced
    finally:
        database.dispose()


def test_a_write_to_a_read_only_database_names_the_files_sqlite_needs_and_the_fix(sqlite_template, tmp_path, capsys):
    database = Database(read_only_copy(sqlite_template, tmp_path))
    try:
        with pytest.raises(SystemExit) as exit_, database_errors(database.url), database.transaction() as session:
            create_key(session, "admin", None)
    finally:
        database.dispose()
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "attempt to write a readonly database" in err and "-wal and -shm" in err, err
    assert "PRAGMA journal_mode=DELETE" in err and "README, SQLite" in err, err


def test_the_writers_lock_file_is_made_with_the_database_files_mode(sqlite_template, tmp_path):
    # Made 0600, it shut every other user out of writing a database shared with a group.
    url = new_sqlite_url(sqlite_template, tmp_path)
    path = url[len("sqlite:///"):]
    os.chmod(path, 0o660)
    database = Database(url)
    try:
        with database.transaction() as session:
            create_key(session, "admin", None)
    finally:
        database.dispose()
    assert stat.S_IMODE(os.stat(f"{path}-writer.lock").st_mode) == 0o660


@pytest.mark.skipif(os.geteuid() != 0, reason="only root may give a file another owner")
def test_the_writers_lock_file_made_by_root_is_given_the_database_files_owner_and_group(sqlite_template, tmp_path):
    # `revshare db upgrade` run as root made it root's, 0644 as the database: the service's own user
    # could then not open it, and every write failed (SQLite gives its -wal and -shm files the
    # database file's owner when run as root).
    url = new_sqlite_url(sqlite_template, tmp_path)
    path = url[len("sqlite:///"):]
    os.chown(path, 65534, 65534)
    upgrade(url)
    made = os.stat(f"{path}-writer.lock")
    assert (made.st_uid, made.st_gid, stat.S_IMODE(made.st_mode)) == (65534, 65534, stat.S_IMODE(os.stat(path).st_mode))



def test_writers_opening_one_database_through_a_symlink_and_its_real_path_queue_on_one_lock_file(
        sqlite_template, tmp_path):
    # The lock file was named after the path as given: a writer through a symlink queued on a lock
    # file of its own beside the link, took it while another writer held the real one, and fell back
    # on SQLite's busy handler, which polls in sleeps of up to 100 ms (or gives up as locked).
    real_url = new_sqlite_url(sqlite_template, tmp_path)
    real = Path(real_url[len("sqlite:///"):])
    (tmp_path / "elsewhere").mkdir()
    link = tmp_path / "elsewhere" / "books.db"
    link.symlink_to(real)
    holding, release, failures = threading.Event(), threading.Event(), []

    def hold_the_write_lock() -> None:
        database = Database(real_url)
        try:
            with database.transaction() as session:
                create_key(session, "admin", None)
                holding.set()
                release.wait(30)
        except Exception as error:  # reported to the test below
            failures.append(error)
        finally:
            holding.set()
            database.dispose()

    holder = threading.Thread(target=hold_the_write_lock)
    holder.start()
    through_link = Database(f"sqlite:///{link}", lock_wait_s=0.3)
    try:
        assert holding.wait(30) and not failures, failures
        with pytest.raises(OperationalError, match="another writer held it past 0.3 s"):
            with through_link.transaction() as session:
                create_key(session, "admin", None)
    finally:
        release.set()
        holder.join()
        through_link.dispose()
    assert not failures, failures
    assert not (tmp_path / "elsewhere" / "books.db-writer.lock").exists()


def test_a_writers_lock_file_that_cannot_be_opened_is_an_error_naming_it_not_a_traceback(sqlite_template, tmp_path):
    # As for a lock file another user made 0600, or a directory this user may not create it in: the
    # driver hook raised the OSError itself, a traceback on the command line and a 500 in the API.
    url = new_sqlite_url(sqlite_template, tmp_path)
    lock = f"{url[len('sqlite:///'):]}-writer.lock"
    os.mkdir(lock)  # cannot be opened for writing, whoever runs the test
    database = Database(url)
    try:
        with pytest.raises(OperationalError, match="unable to open the writers' lock file"):
            with database.transaction() as session:
                create_key(session, "admin", None)
    finally:
        database.dispose()
    result = invoke(url, "keys", "create", "--role", "admin")
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert f"unable to open the writers' lock file {lock!r}" in result.output, result.output
    assert "run them as one user" in result.output, result.output


def test_db_upgrade_makes_the_directory_of_a_percent_encoded_path_where_sqlite_opens_it(tmp_path):
    # The directory was made from the URL's raw text: `my%20books/` beside the `my books/` SQLite then
    # failed to open the database in ("unable to open database file").
    url = f"sqlite:///{tmp_path}/my%20books/livres%C3%A9.db"
    upgrade(url)
    assert (tmp_path / "my books" / "livresé.db").is_file()
    assert not (tmp_path / "my%20books").exists()
    assert invoke(url, "verify").exit_code == 0


def read_only_mount_run(source, mount_point, *args: str) -> subprocess.CompletedProcess | None:
    """`revshare ARGS` on a read-only bind mount of `source` at `mount_point`, in a mount namespace
    of its own; None where this process may not make one (not root, or no `unshare`)."""
    mount = f"mount --bind -o ro {shlex.quote(str(source))} {shlex.quote(str(mount_point))}"
    if shutil.which("unshare") is None or subprocess.run(
            ["unshare", "-m", "sh", "-c", mount], capture_output=True).returncode != 0:
        return None
    url = f"sqlite:///{mount_point}/revshare.db"
    command = f"{mount} && exec {shlex.quote(sys.executable)} -m cli.main {' '.join(map(shlex.quote, args))}"
    environment = {**os.environ, "REVSHARE_DATABASE_URL": url, "PYTHONPATH": str(REPOSITORY)}
    return subprocess.run(["unshare", "-m", "sh", "-c", command], env=environment, capture_output=True, text=True,
                          timeout=120)


def test_a_copy_in_wal_mode_on_a_read_only_file_system_is_refused_naming_the_fix_and_read_once_out_of_it(
        sqlite_template, tmp_path):
    # SQLite says "unable to open database file" there, not "attempt to write a readonly database",
    # and the fix an auditor needs was printed only for the second.
    source, mount_point = tmp_path / "audit", tmp_path / "mounted"
    source.mkdir(), mount_point.mkdir()
    shutil.copyfile(sqlite_template, source / "revshare.db")
    with sqlite3.connect(source / "revshare.db") as connection:
        assert connection.execute("PRAGMA journal_mode=WAL").fetchone() == ("wal",)
    connection.close()
    refused = read_only_mount_run(source, mount_point, "verify")
    if refused is None:
        pytest.skip("no read-only mount can be made here (needs root and unshare)")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "unable to open database file" in refused.stderr, refused.stderr
    assert "PRAGMA journal_mode=DELETE" in refused.stderr and "read-only file system" in refused.stderr, refused.stderr
    with sqlite3.connect(source / "revshare.db") as connection:
        assert connection.execute("PRAGMA journal_mode=DELETE").fetchone() == ("delete",)
    connection.close()
    read = read_only_mount_run(source, mount_point, "verify")
    assert read.returncode == 0 and read.stdout.endswith("ok\n"), read.stdout + read.stderr


def test_a_writer_that_queued_gives_sqlites_busy_handler_only_what_is_left_of_its_wait(
        sqlite_template, tmp_path, monkeypatch):
    # A writer that does not queue (the sqlite3 shell) holds the database; the writers' lock is held
    # a while too. The writer that queued behind it then waited its whole wait again in SQLite's busy
    # handler: a request answered its 503 after 20 s where the README says 10.
    waits_s: list[float] = []  # what the queue says it waited, which a loaded machine stretches or cuts
    queue_for_write = db._QueuedWriterConnection.queue_for_write

    def recorded(connection, wait_s=None) -> float:
        releaser.start()  # here, so that the queue is let go 0.3 s after it was joined, however late
        waits_s.append(queue_for_write(connection, wait_s))
        return waits_s[-1]
    monkeypatch.setattr(db._QueuedWriterConnection, "queue_for_write", recorded)
    url = new_sqlite_url(sqlite_template, tmp_path)
    path = make_url(url).database
    shell = sqlite3.connect(path, isolation_level=None)
    shell.execute("BEGIN IMMEDIATE")
    queue = os.open(writer_lock_path(path), os.O_RDWR | os.O_CREAT)
    fcntl.flock(queue, fcntl.LOCK_EX)
    releaser = threading.Timer(0.3, fcntl.flock, (queue, fcntl.LOCK_UN))
    database = Database(url, lock_wait_s=1.0)  # beyond the 0.3 s, room for a timer a loaded machine runs late
    statements: list[str] = []
    try:
        with database.engine.connect() as connection:
            driver = connection.connection.driver_connection
            driver.set_trace_callback(statements.append)
            with pytest.raises(OperationalError, match="database is locked"):
                connection.execution_options(writer=True).begin()
            releaser.join()
            driver.set_trace_callback(None)
            assert driver.execute("PRAGMA busy_timeout").fetchone() == (1000,)  # put back for the next writer
    finally:
        releaser.cancel()
        os.close(queue)
        shell.rollback()
        shell.close()
        database.dispose()
    pragmas = [statement for statement in statements if statement.startswith("PRAGMA busy_timeout=")]
    assert statements.index(pragmas[0]) < statements.index("BEGIN IMMEDIATE"), statements
    # 1,000 ms less what it queued (0.3 s or more: the lock is let go 0.3 s after it was joined)
    [waited_s] = waits_s
    assert waited_s >= 0.29 and pragmas[0] == f"PRAGMA busy_timeout={max(1, round((1.0 - waited_s) * 1000))}", (
        waited_s, statements)
    assert pragmas[-1] == "PRAGMA busy_timeout=1000", statements


def test_an_upgrade_waits_for_the_writer_ahead_of_it_a_bounded_while_then_names_the_busy_database(
        sqlite_template, tmp_path, monkeypatch):
    # The migrations hold the writers' queue on SQLite; behind a writer that does not let go, an
    # upgrade waited without end and without a word.
    from ledger import migrate

    url = new_sqlite_url(sqlite_template, tmp_path)
    path = make_url(url).database
    monkeypatch.setattr(migrate, "LOCK_WAIT_S", 0.2)
    queue = os.open(writer_lock_path(path), os.O_RDWR | os.O_CREAT)
    fcntl.flock(queue, fcntl.LOCK_EX)
    try:
        with pytest.raises(OperationalError, match="another writer held it past 0.2 s"):
            upgrade(url)
    finally:
        os.close(queue)
    upgrade(url)  # the writer gone: at the latest revision already, nothing to do
