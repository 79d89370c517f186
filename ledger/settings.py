"""The one settings object, read from `REVSHARE_*` environment variables and validated at start-up.

Nothing else in the code base reads the environment: the CLI, the WSGI entry point and the
scheduler build a `Settings` with `Settings.from_env()` and pass it down.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Mapping

from sqlalchemy import make_url
from sqlalchemy.exc import ArgumentError, SAWarning

# What Python makes of bytes that are not UTF-8 in the environment, the command line's arguments or a
# file read with the "surrogateescape" error handler: one lone surrogate a byte, U+DC80-U+DCFF.
NOT_UTF8 = re.compile("[\udc80-\udcff]")

PREFIX = "REVSHARE_"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
PORT_MAX = 65535
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")  # no URL holds one as it is (RFC 3986): a mistake's


class SettingsError(ValueError):
    """A bad configuration value; the message names the variable."""


def _default_database_url() -> str:
    return f"sqlite:///{Path.cwd() / 'var' / 'revshare.db'}"


def without_password(url: str) -> str:
    """`url` with its password, if it has one, as `***`: an error message ends up in logs.

    A URL SQLAlchemy parses is shown as given when it has no password, else as SQLAlchemy renders it
    (which percent-encodes an SQLite path's `:`). One it does not parse (a port that is not a
    number, one slash after the scheme), or whose host or database name holds an `@` (a password's,
    not encoded), has everything between the user's name and the last `@` masked, whatever it
    holds: a pattern of what a password may not hold showed one with a `/` in it. A `password=` or
    `sslpassword=` option (libpq's, for the client key) is masked too, in any case."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        parsed = None
    # A password's `@` not encoded leaves the rest in the host, or, after a `/`, in the database name.
    if parsed is not None and "@" not in (parsed.host or "") and not (
            parsed.password is not None and parsed.host and "@" in (parsed.database or "")):
        shown = url if parsed.password is None else parsed.render_as_string(hide_password=True)
    elif (credentials := re.match(r"([A-Za-z][A-Za-z0-9+.-]*:/*)?(.*)@", url, re.DOTALL)) is None:
        shown = url  # no `@`: no user, so no password
    else:
        scheme, user = credentials.group(1) or "", credentials.group(2).partition(":")[0]
        shown = f"{scheme}{user + ':' if ':' in credentials.group(2) else ''}***{url[credentials.end() - 1:]}"
    return re.sub(r"([?&](?:ssl)?password=)[^&]*", r"\1***", shown, flags=re.IGNORECASE)


def _misread(url: str) -> str | None:
    """Why the driver (SQLAlchemy's reading, whose password ends at the first `@` and whose user name
    ends at a `/`) would read a piece of a PostgreSQL URL's password as its host or its database's
    name, and name it in its errors, or show the URL with nothing masked; None if it would not."""
    rest = url.partition("//")[2]
    if rest.count("@") > 1:
        return "holds more than one @: write an @ of the user's name, password, database or a parameter as %40"
    credentials, at, _ = rest.partition("@")
    if at and "?" in credentials:  # an @ in a parameter's value, read as the end of a password
        return "holds an @ after a ?: write an @ of a parameter's value as %40, and a ? of the password as %3F"
    if at and "/" in credentials.partition(":")[0]:
        return "holds a / in its user's name: write it as %2F"
    return None


def _unreadable(url: str) -> str | None:
    """Why SQLAlchemy, or the arguments it makes for the driver, cannot take `url`; None if they can.
    Found when the engine was made, it was a traceback from every command, and exit 1 (`verify`'s
    books with problems)."""
    try:
        parsed = make_url(url)
    except ValueError:  # SQLAlchemy's int() of what follows the host's last `:`
        # After the last `@`, as `without_password` shows it: a password may hold `/`, `:` and `?`.
        host = re.split(r"[/?]", re.sub(r"^[^:]*:/*", "", url).rpartition("@")[2], maxsplit=1)[0]
        if host.startswith("[") and "]" not in host:
            return "the IPv6 address's [ is not closed"
        port = host.partition("]")[2].removeprefix(":") if host.startswith("[") else host.partition(":")[2]
        several = ", and several hosts go as ?host=HOST:PORT&host=HOST:PORT" if "," in host else ""
        return f"the port must be a number, got {port!r}{several}"
    except ArgumentError as error:
        return str(error).splitlines()[0]
    if parsed.port is not None and not 1 <= parsed.port <= PORT_MAX:
        return f"the port must be between 1 and {PORT_MAX}, got {parsed.port}"
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")  # as ledger.db.normalize_url
    if parsed.get_backend_name() == "postgresql" and NOT_UTF8.search(url):
        # Python holds an environment's bytes that are not UTF-8 as lone surrogates, which psycopg
        # cannot send; SQLite's path goes to the file system as the bytes given. Neither the byte nor
        # where it stands is named: it may be in the password.
        return "it holds a byte that is not UTF-8 (a file saved in another encoding?): write it in UTF-8"
    dialect = parsed.get_dialect()()
    for query in ({}, *({name: value} for name, value in parsed.query.items())):
        # The whole URL without its options, then each option alone: the reason names the one refused.
        try:
            with warnings.catch_warnings():  # an option pysqlite ignores: the whole URL's, below
                warnings.simplefilter("ignore")
                dialect.create_connect_args(parsed.set(query=query))
        except (ArgumentError, ValueError, TypeError) as error:
            reason = str(error).splitlines()[0]
            return reason if not query else f"its option {_options(query)}: {reason}"
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        dialect.create_connect_args(parsed)
    for warning in warned:
        if issubclass(warning.category, SAWarning):
            # pysqlite's: an option it does not know, left out with a warning. `?mode=ro` without
            # `uri=true` opened the file for writing, and every command wrote to it.
            return str(warning.message).partition(" (Background on this")[0]
    return None


def _in_memory(url: str) -> bool:
    """Whether `url` (one `_unreadable` takes) is an SQLite database that lives as long as its connection:
    `revshare db upgrade` migrated one and said so, and every other command then found no tables. An
    empty name is SQLite's temporary database, deleted as it closes; `file:` is a URI filename's."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return False
    database = parsed.database or ""
    modes = parsed.query.get("mode", ())
    return (database.removeprefix("file:") in ("", ":memory:")
            or "memory" in ((modes,) if isinstance(modes, str) else modes))


def _sqlite_uri(url: str) -> bool:
    """Whether `url` (one `_unreadable` takes) is an SQLite URI filename."""
    parsed = make_url(url)
    return parsed.get_backend_name() == "sqlite" and ("uri" in parsed.query
                                                      or (parsed.database or "").startswith("file:"))


def _books_of(url: str) -> tuple[str, ...] | None:
    """What `url` names: an SQLite file's absolute path; a PostgreSQL server's host and port and the
    database on it (libpq's `?dbname=` before the path's); None for a PostgreSQL URL naming no
    database (libpq's environment, PGDATABASE, or the role's name, picks it)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return "sqlite", str(Path(parsed.database or "").resolve())
    database = _one(parsed.query.get("dbname")) or parsed.database
    host = parsed.host or _one(parsed.query.get("host")) or ""
    port = str(parsed.port or _one(parsed.query.get("port")) or "")
    return None if not database else ("postgresql", host, port, database)


def _one(value: str | tuple[str, ...] | None) -> str | None:
    """A URL option's value (given twice, SQLAlchemy holds a tuple: libpq takes the last)."""
    return value[-1] if isinstance(value, tuple) else value


def _options(query: Mapping[str, str | tuple[str, ...]]) -> str:
    """A URL's options as written (an option given twice is a tuple in SQLAlchemy's URL), a password's masked."""
    return "&".join(f"{name}={'***' if name == 'password' else value}" for name, values in query.items()
                    for value in ((values,) if isinstance(values, str) else values))


def _int_in(name: str, text: str, low: int, high: int) -> int:
    # ASCII digits only, as the API's inputs: int() would also take "2_048", " 2048 " and other scripts' digits.
    if not re.fullmatch(r"-?[0-9]+", text):
        raise SettingsError(f"{PREFIX}{name.upper()} must be an integer, got {text!r}")
    value = int(text)
    if not low <= value <= high:
        raise SettingsError(f"{PREFIX}{name.upper()} must be between {low} and {high}, got {value}")
    return value


@dataclass(frozen=True)
class Settings:
    database_url: str
    # PostgreSQL deployments migrate as the owner and serve as an application role that may only
    # SELECT and INSERT on journal tables; when unset, migrations use `database_url`.
    migration_database_url: str | None = None
    log_level: str = "INFO"
    max_body_bytes: int = 16 * 1024 * 1024
    close_grace_days: int = 3
    payout_day_of_month: int = 1
    release_interval_minutes: int = 60

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        environ = os.environ if environ is None else environ
        names = sorted(PREFIX + f.name.upper() for f in fields(cls))
        for key in sorted(environ):
            # A name in another case is not read (the environment's names are case-sensitive): taken for
            # known, REVSHARE_database_url was passed over for the default, and SQLite made there.
            if key not in names and key.upper() in names:
                raise SettingsError(f"unknown setting {key}: the names are upper case, as {key.upper()}")
            if key not in names and key.startswith(PREFIX):
                raise SettingsError(f"unknown setting {key}; known: " + ", ".join(names))
        get = lambda name: environ.get(PREFIX + name.upper())  # noqa: E731
        if get("database_url") is not None and not get("database_url").strip():
            # Set but empty (a secret that did not load, `${DB_URL}` of an unset variable): the default
            # would have `revshare db upgrade` create an SQLite file, and the service run on it.
            raise SettingsError(f"{PREFIX}DATABASE_URL is set but empty: give the database's URL, or unset "
                                f"it for the default, {_default_database_url()}")
        if get("migration_database_url") is not None and not get("migration_database_url").strip():
            # The same for the owner's URL: migrating as the service's role, PostgreSQL's refusal would
            # then be answered with "set REVSHARE_MIGRATION_DATABASE_URL".
            raise SettingsError(f"{PREFIX}MIGRATION_DATABASE_URL is set but empty: give the owner role's URL, "
                                f"or unset it to migrate as {PREFIX}DATABASE_URL")
        settings = cls.build(
            database_url=get("database_url") or _default_database_url(),
            migration_database_url=get("migration_database_url") or None,
            log_level="INFO" if get("log_level") is None else get("log_level"),
            max_body_bytes=get("max_body_bytes"),
            close_grace_days=get("close_grace_days"),
            payout_day_of_month=get("payout_day_of_month"),
            release_interval_minutes=get("release_interval_minutes"),
        )
        # The service's books: `build` takes a database in memory, which tests and benchmarks use.
        for name, url in (("DATABASE_URL", settings.database_url),
                          ("MIGRATION_DATABASE_URL", settings.migration_database_url)):
            if url is not None and _in_memory(url):
                raise SettingsError(f"{PREFIX}{name} {without_password(url)!r} is an SQLite database in memory, "
                                    "gone when the process ends: give the path of a file "
                                    "(sqlite:////srv/revshare/revshare.db) or a PostgreSQL server's URL")
            if url is not None and _sqlite_uri(url):
                # The commands find the file, its directory and the writers' lock file beside it by the
                # URL's path: `?mode=ro&uri=true` had SQLite open a new file named `revshare.db?mode=ro`
                # (`db upgrade` migrated it, and every other command read its empty books), and
                # `file:/srv/...` was read as a relative directory `file:`.
                raise SettingsError(f"{PREFIX}{name} {without_password(url)!r} is an SQLite URI filename "
                                    "(uri=true, file:): give the file's path alone, as "
                                    "sqlite:////srv/revshare/revshare.db")
        if settings.migration_database_url is not None:
            books, migrated = (_books_of(url) for url in (settings.database_url, settings.migration_database_url))
            # `db upgrade` migrated the other database, and every command then said to run it first.
            # Through another host or port (a pooler's) the name may differ: a pooler names its own.
            if None not in (books, migrated) and books != migrated and (
                    books[0] != migrated[0] or books[:-1] == migrated[:-1]):
                raise SettingsError(f"{PREFIX}MIGRATION_DATABASE_URL names another database ({migrated[-1]!r}) than "
                                    f"{PREFIX}DATABASE_URL ({books[-1]!r}): it is the service's database as its "
                                    "owner role reaches it")
        return settings

    @classmethod
    def build(cls, *, database_url: str, log_level: str = "INFO", migration_database_url: str | None = None,
              max_body_bytes: str | int | None = None, close_grace_days: str | int | None = None,
              payout_day_of_month: str | int | None = None,
              release_interval_minutes: str | int | None = None) -> "Settings":
        # libpq's other scheme, which hosting providers often hand out; SQLAlchemy knows only postgresql://.
        database_url, migration_database_url = (
            None if url is None else re.sub(r"^postgres://", "postgresql://", url)
            for url in (database_url, migration_database_url))
        for name, url in (("DATABASE_URL", database_url), ("MIGRATION_DATABASE_URL", migration_database_url)):
            control = None if url is None else _CONTROL.search(url)
            if url is not None and (control or url != url.strip()):
                # A `.env` saved with Windows line endings: `sqlite:///var/revshare.db\r` had `db upgrade`
                # make a new, empty `revshare.db\r` beside the books. A path's own may be percent-encoded.
                # Not shown: such a URL may be one `without_password` cannot mask (`_misread`'s).
                what = f"a control character ({control.group()!r}) in it" if control else "spaces around it"
                raise SettingsError(f"{PREFIX}{name} has {what} (a file saved with Windows line endings?), and is "
                                    "not shown: give the URL alone, a space or other such character of a path "
                                    "percent-encoded (%20)")
            if url is not None and not url.startswith(("sqlite://", "postgresql://", "postgresql+psycopg://")):
                raise SettingsError(f"{PREFIX}{name} must be an sqlite:// or postgresql:// URL, "
                                    f"got {without_password(url)!r}")
            if url is not None and url.startswith("postgresql") and (misread := _misread(url)):
                # The host the driver read was named in its error: a piece of the password, in the
                # terminal and the scheduler's log, under a URL shown masked.
                raise SettingsError(f"{PREFIX}{name} {misread}")
            if url is not None and (reason := _unreadable(url)):
                raise SettingsError(f"{PREFIX}{name} {without_password(url)!r} is not a URL the database driver "
                                    f"can read: {reason}")
        level = log_level.upper()
        if level not in LOG_LEVELS:
            raise SettingsError(f"{PREFIX}LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, got {log_level!r}")
        defaults = cls.__dataclass_fields__
        pick = lambda name, value, low, high: (  # noqa: E731
            defaults[name].default if value is None else _int_in(name, str(value), low, high))
        return cls(
            database_url=database_url,
            migration_database_url=migration_database_url,
            log_level=level,
            max_body_bytes=pick("max_body_bytes", max_body_bytes, 1024, 1024**3),
            close_grace_days=pick("close_grace_days", close_grace_days, 0, 365),
            payout_day_of_month=pick("payout_day_of_month", payout_day_of_month, 1, 28),
            release_interval_minutes=pick("release_interval_minutes", release_interval_minutes, 1, 1440),
        )
