"""`revshare`: parse arguments, build the settings, call the domain, print, choose the exit code.

Exit codes: 0 success; 1 the books have problems (`verify`), `import` refused events, or the trial
balance does not balance; 2 bad usage or bad input, a database that cannot be used, or an output
that cannot be written (a full disk); 130 stopped by SIGINT (Ctrl-C; `serve` and `scheduler` stop
cleanly on it, 0); 141 the output's reader went away before it was written (a pipe into `head`
that had read enough), as a shell reports a process that SIGPIPE stopped.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import click

from cli.books import TEXT, pass_settings
from ledger.schema import API_ROLES
from ledger.settings import Settings, without_password


# 128 + SIGPIPE: click exited 1 for a closed pipe, which a script read as books that do not balance.
OUTPUT_CLOSED = 141


# 128 + SIGINT: click printed "Aborted!" and exited 1 (books with problems) for a Ctrl-C.
INTERRUPTED = 130


class _Revshare(click.Group):
    def invoke(self, ctx: click.Context):
        if sys.stdout is None and not _runs_without_output(ctx):  # `>&-`: click wrote nothing, and exited 0
            with contextlib.suppress(OSError):  # standard error on a full disk: the exit code alone says it
                click.echo("error: standard output is closed: what the command prints (a new key, a statement, "
                           "what verify found) would be lost; send it to a file, or to /dev/null", err=True)
            _output_to_devnull(sys.stderr)
            sys.exit(2)
        try:
            try:
                return super().invoke(ctx)
            finally:  # what is buffered meets the closed pipe or the full disk here, not at the interpreter's exit
                _flush_output()
        except BrokenPipeError:
            _output_to_devnull()
            sys.exit(OUTPUT_CLOSED)
        except OSError as failed:
            if not isinstance(failed, OutputFailed) and not _refused_to_click(failed):
                raise  # not the output's: a bug, whose traceback is wanted
            _output_to_devnull()
            try:
                click.echo(f"error: cannot write the output: {failed.strerror} (what the command committed stands)",
                           err=True)
            except OSError:  # standard error on the full disk too (`>log 2>&1`): the exit code alone says it
                _output_to_devnull(sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:  # `import` stops on its own (130); the others' transaction in flight rolled back
            click.echo("stopped by SIGINT: its transaction in flight rolled back, and what it committed before "
                       "stands (a close's releases of matured holds); run the command again to finish", err=True)
            sys.exit(INTERRUPTED)


def _runs_without_output(ctx: click.Context) -> bool:
    """Whether the command asked for is one that runs on without a standard output (the server and the
    scheduler, which log to standard error)."""
    asked = [*getattr(ctx, "_protected_args", ()), *ctx.args]
    return bool(asked) and asked[0] in {"serve", "scheduler"}


class OutputFailed(OSError):
    """Standard output refused what was buffered for it, at the command's end (a full disk)."""


def _flush_output() -> None:
    if sys.stdout is None:
        return
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        raise
    except OSError as error:
        raise OutputFailed(error.errno, error.strerror) from error


def _refused_to_click(error: OSError) -> bool:
    """Whether `error` was raised by click writing a command's own lines (verify's problems, a
    document's pieces, an import's summary or its progress on standard error): a full disk refused
    them, and nothing else. Click reads no file of ours and writes nothing but the output."""
    frame = error.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    return frame is not None and Path(frame.tb_frame.f_code.co_filename).parent == _CLICK_DIRECTORY


_CLICK_DIRECTORY = Path(click.__file__).parent


def _output_to_devnull(stream=None) -> None:
    """Python's advice for a closed pipe: point stdout (or `stream`) at devnull, so that the flush at
    exit of what stayed buffered does not fail again (it printed "Exception ignored" and exited 120)."""
    stream = stream or sys.stdout
    if stream is not None:  # None: the descriptor was closed when the process started (`>&-`)
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())


@click.group(cls=_Revshare)
def main() -> None:
    """revshare-ledger: double-entry commission accounting for partner programs."""


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@pass_settings
def db_upgrade(settings: Settings) -> None:
    """Apply every migration (as the owner URL when REVSHARE_MIGRATION_DATABASE_URL is set)."""
    from alembic.util.exc import CommandError

    from cli.books import database_errors
    from ledger.migrate import NEWER_CODE, current_revision, known_revisions, upgrade

    url = settings.migration_database_url or settings.database_url
    with database_errors(url, migrating=True):
        try:
            upgrade(url)
        except CommandError as error:  # alembic's: above all, a revision these migrations do not hold
            newer = current_revision(url) not in known_revisions()
            click.echo(f"error: cannot migrate the database {without_password(url)!r}: {error}"
                       + (f"\n  {NEWER_CODE}" if newer else ""), err=True)
            sys.exit(2)
    click.echo("database is at the latest revision")


@main.command()
@click.option("--head", default=None, metavar="ID:HASH",
              help="A chain head recorded earlier (as this command prints it): prove the journal still holds it.")
@click.option("--close", default=None, metavar="PERIOD:HASH",
              help="A close recorded earlier (as this command prints it): prove the books still hold it.")
@click.option("--program-head", default=None, metavar="ID:HASH",
              help="A head of the program's chain recorded earlier (as this command prints it): prove the "
                   "program's facts up to it are as recorded.")
@pass_settings
def verify(settings: Settings, head: str | None, close: str | None, program_head: str | None) -> None:
    """Recompute the hash chain, the balance of every transaction and every snapshot.

    The books cannot prove that none of their newest transactions, or their newest close, were
    removed, nor that the program's facts were not rewritten with their chain: record the heads and
    the close this prints somewhere else, and pass them with --head, --program-head and --close to a
    later verify."""
    from cli.books import opened
    from ledger.verify import PROGRAM_ROW, parse_close, parse_head
    from ledger.verify import verify as verify_books

    with opened(settings, {"head": "--head", "close": "--close", "program_head": "--program-head"}) as database:
        recorded = None if head is None else parse_head(head)
        recorded_close = None if close is None else parse_close(close)
        recorded_program = (None if program_head is None
                            else parse_head(program_head, field="program_head", what=PROGRAM_ROW))
        with database.reader() as session:
            report = verify_books(session, head=recorded, close=recorded_close, program_head=recorded_program)
    click.echo(f"transactions checked: {report.transactions_checked}")
    click.echo(f"chain head: {report.chain_head}")
    if report.ok and report.head_id:  # a head worth recording: of whole books, and not of an empty journal
        click.echo(f"head to record: {report.head_id}:{report.chain_head}")
    if report.ok and report.program_head[0]:
        click.echo(f"program head to record: {report.program_head[0]}:{report.program_head[1]}")
    if report.ok and report.latest_close:
        click.echo(f"close to record: {report.latest_close[0]}:{report.latest_close[1]}")
    for problem in report.problems:
        where = "" if problem.transaction_id is None else f" transaction {problem.transaction_id}"
        click.echo(f"PROBLEM{where}: {problem.code}: {problem.message}")
    if not report.ok:
        click.echo(f"{len(report.problems)} problem(s) found", err=True)
        sys.exit(1)
    click.echo("ok")


@main.command()
@click.option("--host", type=TEXT, default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="TCP port.")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(1, 64), help="Worker processes.")
@pass_settings
def serve(settings: Settings, host: str, port: int, workers: int) -> None:
    """Serve the HTTP API with gunicorn (wsgi:app)."""
    from cli import server
    from cli.books import refuse_unusable_database

    refuse_unusable_database(settings.database_url)
    refused = server.unbindable(host, port)
    if refused is not None:
        shown = host or '""'
        click.echo(f"error: cannot listen on {shown} port {port}: {refused}", err=True)
        sys.exit(2)
    server.run(server.gunicorn_options(host=host, port=port, workers=workers, log_level=settings.log_level))


@main.group()
def keys() -> None:
    """API keys."""


@keys.command("create")
@click.option("--role", required=True, type=click.Choice(API_ROLES))
@click.option("--partner", "partner_id", type=TEXT, default=None, help="The partner a partner key is bound to.")
@click.option("--expires-at", "expires_at", type=TEXT, default=None,
              help="An RFC 3339 instant from which the key no longer authenticates (default: never).")
@pass_settings
def keys_create(settings: Settings, role: str, partner_id: str | None, expires_at: str | None) -> None:
    """Create an API key and print it (alone, on the last line); it is not shown again."""
    from cli.books import opened, parse_instant_option
    from ledger.instants import format_instant, parse_instant
    from ledger.keys import create_key

    expires_at_us = parse_instant_option(expires_at, "--expires-at", parse_instant)
    with opened(settings, {"partner_id": "--partner", "expires_at": "--expires-at"}) as database, \
            database.transaction() as session:
        key_id, key = create_key(session, role, partner_id, expires_at_us)
    click.echo(f"id: {key_id}")
    click.echo(f"role: {role}" + (f" (partner {partner_id})" if partner_id else ""))
    if expires_at_us is not None:
        click.echo(f"expires: {format_instant(expires_at_us)}")
    click.echo(key)


@keys.command("revoke")
# `nargs=-1`: a header's value pasted unquoted, `Bearer rsk_...`, is two arguments, and click's refusal
# of the second ("unexpected extra argument") showed the key.
@click.argument("key", nargs=-1, required=True, type=TEXT, metavar="KEY")
@click.option("--reason", type=TEXT, default=None, help="Why, kept with the revocation.")
@pass_settings
def keys_revoke(settings: Settings, key: tuple[str, ...], reason: str | None) -> None:
    """Revoke an API key, named by its id or by the key itself (rsk_..., or a header's `Bearer rsk_...`;
    spaces and tabs around it are taken for none): it no longer authenticates (a running server's
    workers may take it for up to 10 more seconds)."""
    from cli.books import opened
    from ledger.instants import format_instant
    from ledger.keys import KEY_PREFIX, key_id_of, pasted, revoke_key

    named = pasted(" ".join(key))
    with opened(settings, {"reason": "--reason"}) as database, database.transaction() as session:
        # Anything holding a key's prefix is taken for a key: refused, it is not shown back.
        key_id = key_id_of(session, named) if KEY_PREFIX in named else named
        revocation, created = revoke_key(session, key_id, reason)
    state = "revoked" if created else "already revoked"
    click.echo(f"{state}: {revocation.key_id} at {format_instant(revocation.revoked_at_us)}")


@keys.command("list")
@pass_settings
def keys_list(settings: Settings) -> None:
    """Every API key, oldest first: its id, role (and partner), when it was made, when it expires (if
    made to) and, if revoked, when and why. The keys themselves are not stored, so not shown."""
    from cli.books import opened
    from ledger.errors import printable
    from ledger.instants import format_instant
    from ledger.keys import list_keys

    with opened(settings) as database, database.reader() as session:
        records = list_keys(session)
    for record in records:
        role = record.role + (f" ({record.partner_id})" if record.partner_id else "")
        line = f"{record.id}  {role}  created {format_instant(record.created_at_us)}"
        if record.expires_at_us is not None:
            line += f"  expires {format_instant(record.expires_at_us)}"
        if record.revocation is not None and record.revocation.revoked_at_us is None:
            line += "  revoked (its row removed past the database's rules: `revshare verify` names it)"
        elif record.revocation is not None:
            line += f"  revoked {format_instant(record.revocation.revoked_at_us)}"
            # One line per key, and a terminal's escape sequence shown, not run: a reason holding
            # "cursor up, delete line" hid the line of the key listed before it.
            reason = printable(" ".join((record.revocation.reason or "").split()))
            line += f": {reason}" if reason else ""
        click.echo(line)


def _register_book_commands() -> None:
    from cli.books import COMMANDS

    for command in COMMANDS:
        main.add_command(command)


_register_book_commands()


if __name__ == "__main__":
    main()
