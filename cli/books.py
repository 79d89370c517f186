"""`revshare` commands over the books: scheduler, demo, import, release-holds, payout-run, close,
statement and trial-balance. Each parses its arguments, opens one transaction, calls the domain
and prints; a domain error prints `error: ...` on stderr and exits with status 2, and so does a
database that cannot be used (unreachable, not a database, or not migrated yet). The scheduler
runs until stopped, logging each job that fails."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import re
import signal
import sqlite3
import sys
from pathlib import Path
from typing import Callable, Iterator

import click
from sqlalchemy import make_url, text
from sqlalchemy.exc import DatabaseError, IntegrityError

from ledger.db import Database, database_words, sqlite_file, writer_lock_path
from ledger.errors import DomainError, totals_not_asked
from ledger.guards import verify_guards
from ledger.settings import NOT_UTF8, Settings, SettingsError, without_password


# A document (a statement, a trial balance) is written in pieces of this many characters, each
# flushed: at most 8 KiB of UTF-8, Python's buffer. Written whole, a short write (a disk that filled,
# a pipe's reader gone after reading some) dropped the rest without an error, and the command exited
# 0 with its output cut mid-line; flushed in pieces, the write that fails raises (`cli.main` says so).
OUTPUT_PIECE_CHARS = 2_048


def echo_document(text: str) -> None:
    """`text` on standard output, whole or not at all without an error (`OUTPUT_PIECE_CHARS`)."""
    for start in range(0, len(text), OUTPUT_PIECE_CHARS):
        click.echo(text[start:start + OUTPUT_PIECE_CHARS], nl=False)


def pass_settings(command: Callable) -> Callable:
    """Give `command` the settings as its first argument, read from the environment when a command
    first runs, not when `revshare` starts: a bad setting's error then answered `revshare statement
    --help` too, which has no use for settings."""
    @functools.wraps(command)
    def with_settings(*args, **kwargs):
        return command(_settings(click.get_current_context().find_root()), *args, **kwargs)
    return with_settings


def _settings(root: click.Context) -> Settings:
    """The settings, read once a run (kept in the root context) and the logging set by them."""
    if root.obj is None:
        try:
            settings = Settings.from_env()
        except SettingsError as error:
            raise click.UsageError(str(error), ctx=root) from None
        logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        logging.getLogger("alembic").setLevel(max(logging.WARNING, logging.getLevelName(settings.log_level)))
        root.obj = settings
    return root.obj


class _Text(click.ParamType):
    """Text typed on the command line. Python holds an argument's bytes that are not UTF-8 as lone
    surrogates ("surrogateescape"), which no database driver can send: refused here, naming the
    argument (exit 2), instead of a traceback from the driver. File names are not text: `import`
    takes any."""

    name = "text"

    def convert(self, value, param, ctx):
        if isinstance(value, str) and (found := NOT_UTF8.search(value)):
            byte = ord(found.group()) - 0xDC00  # where surrogateescape put it
            self.fail(f"not UTF-8 text: byte 0x{byte:02x} at character {found.start() + 1}", param, ctx)
        return value


TEXT = _Text()


@contextlib.contextmanager
def domain_errors(options: dict[str, str] | None = None) -> Iterator[None]:
    """Print a domain error and exit 2. `options` names the command-line option that gave a field
    (`{"at": "--at"}`), so that the message names what the user typed."""
    try:
        yield
    except DomainError as error:
        detail = error.detail
        for field, option in (options or {}).items():
            if detail.startswith(f"{field}:"):
                detail = option + detail[len(field):]
        # Each field in its own words, but for one the detail begins with and has no more to say of:
        # that was said twice, in two wordings (`--at: a payout run was made at ...`, then `--at:
        # before the latest payout run`).
        named = [(options or {}).get(name, name) for name in error.fields]
        lines = [f"{option}: {'; '.join(messages)}" for option, messages in zip(named, error.fields.values())
                 if len(messages) > 1 or not detail.startswith(f"{option}:")]
        click.echo("\n  ".join([f"error: {detail}", *lines]), err=True)
        sys.exit(2)


@contextlib.contextmanager
def opened(settings: Settings, options: dict[str, str] | None = None) -> Iterator[Database]:
    """The settings' database, disposed of afterwards; a domain error, or a database that cannot be
    used, exits 2 with `error: ...`. An SQLite file that does not exist is not created: a mistyped
    path would leave an empty database behind (only `revshare db upgrade` makes one)."""
    refuse_missing_sqlite_file(settings.database_url)
    database = Database(settings.database_url)
    try:
        with database_errors(settings.database_url):
            with database.reader() as session:
                revision = session.execute(text("SELECT version_num FROM alembic_version")).scalar()
        _refuse_other_revision(settings.database_url, revision)
        with database_errors(settings.database_url), domain_errors(options):
            yield database
    finally:
        database.dispose()


def _refuse_other_revision(url: str, revision: str | None) -> None:
    """Exit 2 unless the database is at the code's latest revision (`ledger.migrate.revision_unlike_code`)."""
    from ledger.migrate import revision_unlike_code

    unlike = revision_unlike_code(revision)
    if unlike is not None:
        click.echo(f"error: cannot use the database {without_password(url)!r}: {unlike}", err=True)
        sys.exit(2)


@contextlib.contextmanager
def database_errors(url: str, *, migrating: bool = False) -> Iterator[None]:
    """A database that cannot be used (unreachable, not a database, not migrated, a role without the
    privileges it needs) is `error: ...`, a line naming the fix where one is known, and exit 2; a
    broken invariant (IntegrityError) is a bug, whose traceback is wanted. `migrating`: the URL is
    the one `revshare db upgrade` migrates as."""
    try:
        yield
    except IntegrityError:
        raise
    except DatabaseError as error:
        click.echo(f"error: cannot use the database {without_password(url)!r}: "
                   f"{database_words(error)}", err=True)
        if _UNMIGRATED.search(str(error.orig)):
            click.echo("  it is not migrated to the latest revision: run `revshare db upgrade` first", err=True)
        elif _cannot_write_beside(error.orig, url):
            click.echo(_READ_ONLY_FIX, err=True)
        elif getattr(error.orig, "sqlstate", None) == _INSUFFICIENT_PRIVILEGE:
            click.echo(_privilege_fix(str(error.orig), make_url(url).username, migrating), err=True)
        sys.exit(2)


def _cannot_write_beside(error: BaseException, url: str) -> bool:
    """SQLite refused for want of writing the database file or its directory. On a read-only file
    system it says "unable to open database file" (of the -shm file it cannot create), which reads as
    a missing or damaged file, so a directory that cannot be written decides there."""
    code = getattr(error, "sqlite_errorcode", 0) & 0xFF  # SQLite's errors alone carry one
    if code != sqlite3.SQLITE_CANTOPEN:
        return code == sqlite3.SQLITE_READONLY
    path = make_url(url).database
    return bool(path) and not os.access(Path(path).absolute().parent, os.W_OK)


# SQLite's "attempt to write a readonly database" names neither the cause nor the fix.
_READ_ONLY_FIX = (
    "  this user may not write the database file or its directory, or they lie on a read-only file system:\n"
    "  a command that writes needs both, and even reading a database in WAL mode (as the service keeps it)\n"
    "  needs its directory writable, for the -wal and -shm files SQLite keeps beside it; to read a copy where\n"
    "  nothing may be written, take it out of WAL mode last, just before making it read-only (every command\n"
    "  that may write there puts it back): sqlite3 COPY 'PRAGMA journal_mode=DELETE' (README, SQLite)")
_INSUFFICIENT_PRIVILEGE = "42501"  # PostgreSQL's SQLSTATE for a privilege the role lacks
APP_ROLE = "revshare_app"  # the application role the migrations create (0005) and grant to


def _privilege_fix(message: str, role: str | None, migrating: bool) -> str:
    """What to do about a PostgreSQL privilege the role lacks: PostgreSQL names the privilege, not
    the grant or the setting that gives it (README, Configuration; Backup and restore)."""
    if "create role" in message:
        return (f"  the migrations create the role {APP_ROLE}: give the migration role CREATEROLE, or have a "
                f"DBA run `CREATE ROLE {APP_ROLE} NOLOGIN` first (README, Configuration)")
    if migrating:
        return ("  migrate as the owner of the database (or of its tables): set REVSHARE_MIGRATION_DATABASE_URL "
                "to that role's URL (README, Configuration)")
    return (f"  the role {role or ''} needs the privileges of {APP_ROLE}: `GRANT {APP_ROLE} TO {role or '<role>'}`; "
            f"a database restored where the role {APP_ROLE} did not exist lost its grants: create the role, "
            "then restore again (README, Configuration; Backup and restore)")


def refuse_unusable_database(url: str) -> None:
    """Exit 2 for a database `revshare serve` and `revshare scheduler` could not use: one that
    cannot be opened or reached, is not a database, or is not migrated to the latest revision.
    Started on it, gunicorn would answer every request that reads the books with a 500, and the
    scheduler fail every job, as long as they ran."""
    refuse_missing_sqlite_file(url)
    database = Database(url)
    try:
        with database_errors(url), database.reader() as session:
            revision = session.execute(text("SELECT version_num FROM alembic_version")).scalar()
            rewriter = None if database.engine.dialect.name != "postgresql" else session.execute(text(
                "SELECT current_user WHERE has_table_privilege(current_user, 'journal_lines', 'UPDATE')")).scalar()
            unguarded = verify_guards(session)
    finally:
        database.dispose()
    _refuse_other_revision(url, revision)
    _refuse_unwritable_sqlite_file(url)
    # Warnings, not refusals: one URL for both is the simplest set-up, and a valid one; and the books
    # go on (`revshare verify` names each guard astray, and the nightly verify logs it).
    if rewriter is not None:
        click.echo(f"warning: the database role {rewriter} may UPDATE the journal (it owns the tables, is a "
                   "superuser or was granted UPDATE): it could drop the guards, or write past them\n  serve as a "
                   "role granted revshare_app, and migrate as the owner with REVSHARE_MIGRATION_DATABASE_URL "
                   "(README, Configuration)", err=True)
    for _, code, message in unguarded:
        click.echo(f"warning: {code}: {message}", err=True)


def _refuse_unwritable_sqlite_file(url: str) -> None:
    """Exit 2 for an SQLite database this user may not write: its file, its directory (the -wal and
    -shm files) or the writers' lock file. The service and the scheduler both write; started on it,
    gunicorn answered every write with a 500 while reads went on, and the scheduler retried its jobs
    for ever. (As root, only a read-only file system or mount refuses.)"""
    database = sqlite_file(url)
    if database is None:
        return
    path = Path(os.path.realpath(database))
    lock = Path(writer_lock_path(database))
    refused = [str(place) for place in (path, path.parent) if not os.access(place, os.W_OK)]
    if lock.exists() and not os.access(lock, os.R_OK | os.W_OK):
        refused.append(str(lock))
    if refused:
        click.echo(f"error: cannot use the database {without_password(url)!r}: this user may not write "
                   f"{' nor '.join(map(repr, refused))}, which the service and the scheduler write\n"
                   "  every process that writes needs the database file, its directory and the writers' lock "
                   "file writable: run them as one user, or give a group the three (README, SQLite)", err=True)
        sys.exit(2)


def refuse_missing_sqlite_file(url: str) -> None:
    """Exit 2 for an SQLite file that does not exist, which connecting would create empty, and for
    one whose directory does not exist (the default `./var/` before `revshare db upgrade` made it),
    where SQLite's own error would name neither the directory nor the command to run."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return
    path = Path(parsed.database)
    if not path.parent.exists():
        missing = f"unable to open database file: the directory {str(path.parent.absolute())!r} does not exist"
    elif path.parent.is_dir() and not path.exists():
        missing = f"the file {str(path)!r} does not exist"
    else:
        return
    click.echo(f"error: cannot use the database {parsed!r}: {missing}\n"
               "  it has no tables yet: run `revshare db upgrade` first", err=True)
    sys.exit(2)


# SQLite's and PostgreSQL's words for a table or a column that is not there: a database with no
# tables, or one a migration behind the code (a column or table the latest migration adds).
_UNMIGRATED = re.compile(r"no such (table|column)|has no column named|(relation|column) \S+ does not exist"
                         r"|column \S+ of relation \S+ does not exist")


def parse_instant_option(value: str | None, name: str, parse: Callable[..., int]) -> int | None:
    """`value` read by `parse` (`ledger.instants.parse_at` for an action's `--at`, `parse_as_of`
    for a report's `--as-of`: a date is the start of that day for the first, its end for the second)."""
    if value is None:
        return None
    with domain_errors():
        return parse(value, field=name)


@click.command()
@pass_settings
def scheduler(settings: Settings) -> None:
    """Run the scheduled jobs (release holds, close periods, payout runs, verify) until stopped. A
    PostgreSQL server that does not take connections yet is waited for (stopped by SIGTERM or SIGINT)."""
    from jobs import scheduler as process

    if not process.wait_for_database(settings.database_url):
        return
    refuse_unusable_database(settings.database_url)
    process.run(settings)


@click.command()
@pass_settings
def demo(settings: Settings) -> None:
    """Load a realistic demo program (idempotent: a second load changes nothing)."""
    from ledger.demo import load_demo

    with opened(settings) as database, database.transaction() as session:
        result = load_demo(session)
    if result.loaded:
        click.echo(f"demo loaded: {result.events} revenue events, {result.closed_periods} closed periods")
    else:
        click.echo("demo already loaded; nothing changed")


class _Stopped(Exception):
    """SIGINT or SIGTERM asked an import to stop: raised while it reads, or once a batch committed."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@click.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@click.option("--format", "file_format", type=click.Choice(["auto", "ndjson", "csv"]), default="auto",
              show_default=True, help="auto: by the file name's extension (.csv; .ndjson, .jsonl, .json), "
                                      "else NDJSON when its first character that is not blank is '{', and CSV "
                                      "otherwise.")
@click.option("--batch-size", type=click.IntRange(1, 10_000), default=5000, show_default=True,
              help="Events per transaction; each committed batch stands if the import is stopped.")
@pass_settings
def import_events(settings: Settings, path: str, file_format: str, batch_size: int) -> None:
    """Import revenue events from an NDJSON or CSV file (UTF-8), or from standard input when PATH is
    '-'. Safe to run again: nothing applies twice. Exits 1 when any event was refused. SIGINT
    (Ctrl-C) or SIGTERM stops it at once while it reads, and once the batch it is applying has
    committed: it prints what the batches did and exits 130 or 143; a second signal stops a batch
    too, as SIGKILL would (rolled back). Either way, run it again: what committed replays. A signal
    the import was started ignoring (`nohup`, a shell's background job) stays ignored."""
    from ledger.importer import Summary, Unreadable

    summary, state = Summary(), {"applying": False, "asked": None}

    def ask_to_stop(signum, frame) -> None:
        if state["asked"] is not None:  # asked again: at once, by the signal itself
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        state["asked"] = signum
        if not state["applying"]:  # reading: nothing is being written
            raise _Stopped(signum)

    @contextlib.contextmanager
    def applying() -> Iterator[None]:
        state["applying"] = True
        try:
            yield
        finally:
            state["applying"] = False
        if state["asked"] is not None:  # asked while the batch was applied: it has committed
            raise _Stopped(state["asked"])

    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    for signum, handler in previous.items():
        if handler is not signal.SIG_IGN:
            signal.signal(signum, ask_to_stop)
    again = "run the import again, and what committed replays"
    try:
        _import(settings, path, file_format, batch_size, summary, applying)
    except Unreadable as error:
        committed = (f"; any batch read before it has committed: {again} once it reads"
                     if error.committed else "")
        click.echo(f"error: cannot read {'standard input' if path == '-' else repr(path)}: {error}{committed}",
                   err=True)
        sys.exit(2)
    except _Stopped as stopped:
        click.echo(f"stopped by {stopped} after reading {summary.read} events: the batches applied committed, "
                   f"the events read since were not applied; {again}", err=True)
        _print_summary(summary)
        sys.exit(128 + stopped.signum)
    except SystemExit as exit_:  # the database failed (`opened`): said already, with its fix
        if exit_.code == 2 and sum(summary.statuses.values()) + summary.replayed:
            click.echo(f"  the batches applied before it committed; {again}", err=True)
        raise
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    _print_summary(summary)
    if summary.refused:
        sys.exit(1)


def _print_summary(summary) -> None:
    click.echo(f"read {summary.read} events")
    for status in ("posted", "unattributed", "no_commission"):
        click.echo(f"  {status}: {summary.statuses.get(status, 0)}")
    click.echo(f"  replayed: {summary.replayed}")
    click.echo(f"  refused: {summary.refused}")
    for reason, count in summary.refusal_reasons.most_common():
        click.echo(f"    {count} x {reason}")
    examples = summary.refusal_examples
    for example in examples:
        click.echo(f"    {example}")
    if summary.refused > len(examples):
        click.echo(f"    ... and {summary.refused - len(examples)} more refused (the first {len(examples)} lines "
                   "are shown; the counts above are of all)")


def _import(settings: Settings, path: str, file_format: str, batch_size: int, summary,
            applying: Callable[[], contextlib.AbstractContextManager]) -> None:
    """The import into `summary`, with a progress bar on standard error while the input's size is
    known; `applying` is entered around each batch."""
    from ledger.importer import detect_format, head, import_stream, open_events

    with open_events(path) as stream:
        # A pipe (standard input, a process substitution) is read as a file is, once; it has no size,
        # so there is no progress bar.
        chosen = detect_format(path, head(stream)) if file_format == "auto" else file_format
        size = os.fstat(stream.fileno()).st_size if stream.seekable() else 0
        with opened(settings) as database, contextlib.ExitStack() as shown:
            bars, last = [], [0]

            def start() -> None:  # the bar once the file was read through: a header refused shows none
                if size:
                    bars.append(shown.enter_context(click.progressbar(length=size, label="importing",
                                                                      file=sys.stderr)))

            def advance(_events: int) -> None:
                if bars:
                    position = stream.buffer.tell()
                    bars[0].update(max(0, position - last[0]))
                    last[0] = position

            import_stream(database, stream, chosen, batch_size=batch_size, progress=advance, summary=summary,
                          applying=applying, started=start)


AT_HELP = "Instant (RFC 3339) or date (the start of that day, UTC); not ahead of now; default now."


@click.command("release-holds")
@click.option("--at", "at", default=None, help=AT_HELP)
@pass_settings
def release_holds(settings: Settings, at: str | None) -> None:
    """Release every hold matured by the instant, a hundred to a transaction."""
    from ledger.holds import release_in_transactions
    from ledger.instants import parse_at

    at_us = parse_instant_option(at, "--at", parse_at)
    with opened(settings, {"at": "--at"}) as database, totals_not_asked():  # without --at: now, read under the lock
        released = release_in_transactions(database.transaction, at_us)
    click.echo(f"released: {released}")


@click.command("payout-run")
@click.option("--at", "at", default=None, help=AT_HELP)
@pass_settings
def payout_run(settings: Settings, at: str | None) -> None:
    """Pay every partner whose available balance reaches its plan's minimum (releasing the matured
    holds first, a hundred to a transaction, and printing how many)."""
    from ledger.instants import format_instant, parse_at
    from ledger.money import format_minor
    from ledger.payouts import run_payouts_in_transactions

    at_us = parse_instant_option(at, "--at", parse_at)
    with opened(settings, {"at": "--at"}) as database, totals_not_asked():
        run, released = run_payouts_in_transactions(database.transaction, at_us)
    click.echo(f"released: {released}")
    click.echo(f"payout run {run.id} at {format_instant(run.at_us)}{' (already run)' if run.replayed else ''}")
    for payout in run.payouts:
        click.echo(f"  payout {payout.id}: {payout.partner_id} {format_minor(payout.amount_minor, payout.currency)} "
                   f"{payout.currency} {payout.status}")
    click.echo(f"payouts: {len(run.payouts)}")


@click.command()
@click.argument("period")
@pass_settings
def close(settings: Settings, period: str) -> None:
    """Close a period (YYYY-MM) that has ended, with its snapshot and close hash (releasing the holds
    that matured in it first, a hundred to a transaction, and printing how many). A period closed
    already prints its close, saying so, and changes nothing."""
    from ledger.instants import format_instant, parse_period
    from ledger.periods import close_in_transactions

    with opened(settings) as database, totals_not_asked():
        parse_period(period)
        closed, already, released = close_in_transactions(database.transaction, period)
    click.echo(f"released: {released}")
    made = f" (already closed at {format_instant(closed.closed_at_us)})" if already else ""
    click.echo(f"closed {closed.period}: {closed.transaction_count} transactions, close hash {closed.close_hash}{made}")


@click.command()
@click.argument("partner_id", type=TEXT)
@click.option("--period", required=True, help="YYYY-MM")
@click.option("--format", "output", type=click.Choice(["text", "csv", "json"]), default="text", show_default=True)
@pass_settings
def statement(settings: Settings, partner_id: str, period: str, output: str) -> None:
    """A partner's statement for a period."""
    from ledger.instants import parse_period
    from ledger.partners import get_partner
    from ledger.statements import statement as build, to_csv, to_data, to_text

    with opened(settings, {"period": "--period"}) as database:
        parse_period(period)
        with database.reader() as session:
            get_partner(session, partner_id)
            result = build(session, partner_id, period)
    rendered = {"text": to_text, "csv": to_csv, "json": lambda s: json.dumps(to_data(s), indent=2) + "\n"}[output]
    echo_document(rendered(result))


@click.command("trial-balance")
@click.option("--as-of", "as_of", default=None,
              help="Instant (RFC 3339) or date (the end of that day, UTC: the day's postings count); default now.")
@pass_settings
def trial_balance(settings: Settings, as_of: str | None) -> None:
    """Debits and credits of every account per currency, with totals."""
    from ledger.instants import format_instant, parse_as_of
    from ledger.journal import now_us
    from ledger.money import format_minor
    from ledger.trial_balance import trial_balance as build

    before_us = parse_instant_option(as_of, "--as-of", parse_as_of)
    if before_us is None:  # as of now, as the API's: a posting dated ahead (minutes, at most) has not happened yet
        before_us = now_us()
    with opened(settings) as database, database.reader() as session:
        report = build(session, before_us=before_us)
    rows = [(row.account, row.currency, *(format_minor(minor, row.currency) for minor in
                                          (row.debit_minor, row.credit_minor, row.balance_minor)))
            for row in report.rows]
    rows += [("total", total.currency, format_minor(total.debit_minor, total.currency),
              format_minor(total.credit_minor, total.currency)) for total in report.totals]
    table = trial_balance_table([("account", "cur", "debit", "credit", "balance"), *rows])
    echo_document(f"trial balance as of {format_instant(before_us)}\n{table}\n"
                  + ("balanced\n" if report.balanced else "NOT BALANCED\n"))
    if not report.balanced:
        sys.exit(1)


def trial_balance_table(rows: list[tuple[str, ...]]) -> str:
    """Account and currency left-aligned, amounts right-aligned, every column at least two spaces
    wider than its widest cell: an amount runs past 16 characters (a large book's totals in BHD, or
    in VND, which has no minor digits) and an account name to 92 (a partner id of 64), and columns
    of a fixed width ran one value into the next."""
    widths = [max(least, 2 + max(len(row[column]) for row in rows if len(row) > column))
              for column, least in enumerate((44, 5, 16, 16, 16))]
    return "\n".join((f"{row[0]:<{widths[0]}}{row[1]:<{widths[1]}}" + "".join(
        cell.rjust(width) for cell, width in zip(row[2:], widths[2:]))) for row in rows)


COMMANDS = (scheduler, demo, import_events, release_holds, payout_run, close, statement, trial_balance)
