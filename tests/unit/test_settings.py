"""`Settings.from_env`: what it refuses, and how it names the variable, without a database."""

import pytest

from ledger.settings import Settings, SettingsError, without_password

URL = "sqlite:////srv/revshare/revshare.db"


def refusal(environ: dict[str, str]) -> str:
    with pytest.raises(SettingsError) as refused:
        Settings.from_env(environ)
    return str(refused.value)


@pytest.mark.parametrize("name", ["REVSHARE_database_url", "REVSHARE_Log_Level", "revshare_log_level"])
def test_a_setting_named_in_another_case_is_refused_naming_it_and_the_name_meant(name):
    # The names were checked in lower case but read in upper case: REVSHARE_database_url passed the
    # check, was never read, and the service ran on the default SQLite file.
    message = refusal({name: "bogus"})
    assert message == f"unknown setting {name}: the names are upper case, as {name.upper()}"
    assert refusal({"REVSHARE_DATABASE_URL": URL, name: "bogus"}).startswith(f"unknown setting {name}:")


def test_a_setting_named_in_upper_case_is_read_and_an_unknown_one_refused_with_the_known_names():
    assert Settings.from_env({"REVSHARE_DATABASE_URL": URL, "REVSHARE_LOG_LEVEL": "debug"}).log_level == "DEBUG"
    message = refusal({"REVSHARE_DATABASE_URI": URL})
    assert message.startswith("unknown setting REVSHARE_DATABASE_URI; known: REVSHARE_CLOSE_GRACE_DAYS, ")
    assert Settings.from_env({"REVSHARE_DATABASE_URL": URL, "OTHER_database_url": "x"}).database_url == URL


@pytest.mark.parametrize("url, shown", [
    ("postgresql://app:pa@s/s@db/revshare", "postgresql://app:***@db/revshare"),  # host "s", database "s@db/..."
    ("postgresql://app@db/revshare?password=pa@ss", "postgresql://app@db/revshare?password=***"),
    ("postgresql://app:p%40ss@db/revshare", "postgresql://app:***@db/revshare"),
    ("sqlite:////srv/app@host/books.db", "sqlite:////srv/app@host/books.db"),  # a path's `@`: no password
    ("postgresql://app@db/re@v", "postgresql://app@db/re@v"),  # a database name's `@`, and no password
    ("postgresql://app@db/revshare?sslpassword=s3c&PASSWORD=s3c", "postgresql://app@db/revshare?sslpassword=***&PASSWORD=***"),
])
def test_a_url_is_shown_without_its_password_wherever_an_unencoded_at_leaves_the_rest(url, shown):
    assert without_password(url) == shown


@pytest.mark.parametrize("url, shown", [
    ("postgresql+psycopg2://app:s3cr/et@db/revshare", "postgresql+psycopg2://app:***@db/revshare"),
    ("mysql://app:pa/ss@db/revshare", "mysql://app:***@db/revshare"),
    ("postgresql:/app:s3cret@db/revshare", "postgresql:/app:***@db/revshare"),  # one slash: SQLAlchemy cannot parse it
    ("mysql://db.internal/revshare?user=app&password=s3cret", "mysql://db.internal/revshare?user=app&password=***"),
])
@pytest.mark.parametrize("name", ["REVSHARE_DATABASE_URL", "REVSHARE_MIGRATION_DATABASE_URL"])
def test_a_url_in_a_refusal_is_shown_without_its_password_whatever_the_password_holds(name, url, shown):
    # The pattern of the password took it to end at the first `/`: one with a `/` in it, or after a
    # scheme with one slash, was printed whole, to the terminal and the logs.
    message = refusal({"REVSHARE_DATABASE_URL": URL, name: url})
    assert message == f"{name} must be an sqlite:// or postgresql:// URL, got {shown!r}"
    assert "s3c" not in message and "pa/ss" not in message


@pytest.mark.parametrize("url, shown, reason", [
    ("postgresql://app:s3cret@db.internal:54x2/revshare", "postgresql://app:***@db.internal:54x2/revshare",
     "the port must be a number, got '54x2'"),
    ("postgresql://app:s3c/ret@db.internal:54x2/revshare", "postgresql://app:***@db.internal:54x2/revshare",
     "the port must be a number, got '54x2'"),
    ("postgresql://app@[::1/revshare", "postgresql://***@[::1/revshare", "the IPv6 address's [ is not closed"),
    ("postgresql://app:s3cret@db.internal:70000/revshare", "postgresql://app:***@db.internal:70000/revshare",
     "the port must be between 1 and 65535, got 70000"),
    ("sqlite:////srv/revshare/revshare.db?timeout=abc", "sqlite:////srv/revshare/revshare.db?timeout=abc",
     "its option timeout=abc: could not convert string to float: 'abc'"),
    ("sqlite://db.internal/revshare.db", "sqlite://db.internal/revshare.db",
     "Invalid SQLite URL: sqlite://db.internal/revshare.db"),
    # Left out by the driver with a warning: the file was opened for writing, and written.
    ("sqlite:////srv/revshare/revshare.db?mode=ro", "sqlite:////srv/revshare/revshare.db?mode=ro",
     "Query string argument(s) 'mode' are not accepted by the pysqlite driver and are being ignored; "
     "SQLite URI arguments require that 'uri=true' also be present in the URL."),
    # A byte that is not UTF-8 (a .env saved in Latin-1), held by Python as a lone surrogate: psycopg
    # cannot send it. Neither named nor placed, in a password or anywhere.
    *((url, shown, "it holds a byte that is not UTF-8 (a file saved in another encoding?): write it in UTF-8")
      for url, shown in (
          ("postgresql://app:s3cr\udce9t@db.internal/revshare", "postgresql://app:***@db.internal/revshare"),
          ("postgresql://app\udce9@db.internal/revshare", "postgresql://app\udce9@db.internal/revshare"),
          ("postgresql+psycopg://app@db.internal/caf\udce9", "postgresql+psycopg://app@db.internal/caf\udce9"))),
])
@pytest.mark.parametrize("name", ["REVSHARE_DATABASE_URL", "REVSHARE_MIGRATION_DATABASE_URL"])
def test_a_url_the_driver_cannot_read_is_refused_at_load_naming_the_variable_and_why(name, url, shown, reason):
    # Taken as it was, each failed where the engine was made: a traceback from every command.
    message = refusal({"REVSHARE_DATABASE_URL": URL, name: url})
    assert message == f"{name} {shown!r} is not a URL the database driver can read: {reason}"
    assert "s3c" not in message
    for url in ("postgresql://app:pw@[::1]:5432/revshare?sslmode=require&connect_timeout=5",
                "postgresql+psycopg://app@/revshare?host=/run/postgresql",
                "sqlite:////srv/revshare/revshare.db?timeout=5",
                "sqlite:////srv/revshare/caf\udce9.db"):  # a path goes to the file system as its bytes
        assert Settings.from_env({"REVSHARE_DATABASE_URL": url}).database_url == url


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///", "sqlite:///:memory:", "sqlite:///file::memory:?uri=true",
                                 "sqlite:///file:books?mode=memory&cache=shared&uri=true"])
@pytest.mark.parametrize("name", ["REVSHARE_DATABASE_URL", "REVSHARE_MIGRATION_DATABASE_URL"])
def test_an_sqlite_database_in_memory_is_refused_as_the_service_s_books_naming_the_variable(name, url):
    # `revshare db upgrade` migrated it and said so, and it was gone when the command ended: every
    # other command then said to run `revshare db upgrade` first, for ever.
    message = refusal({"REVSHARE_DATABASE_URL": URL, name: url})
    assert message.startswith(f"{name} {url!r} is an SQLite database in memory, gone when the process ends: ")
    assert Settings.from_env({"REVSHARE_DATABASE_URL": "sqlite:////srv/revshare/memory.db"})
    assert Settings.build(database_url=url).database_url == url  # tests and benchmarks build one in code


@pytest.mark.parametrize("url", ["sqlite:////srv/revshare/revshare.db?mode=ro&uri=true",
                                 "sqlite:///file:/srv/revshare/revshare.db?mode=ro&uri=true",
                                 "sqlite:///file:/srv/revshare/revshare.db?uri=true", "sqlite:///file:revshare.db"])
@pytest.mark.parametrize("name", ["REVSHARE_DATABASE_URL", "REVSHARE_MIGRATION_DATABASE_URL"])
def test_an_sqlite_uri_filename_is_refused_naming_the_variable(name, url):
    # The commands find the file, its directory and its lock by the URL's path: `?mode=ro&uri=true`
    # had SQLite make a file named `revshare.db?mode=ro`, which `db upgrade` migrated and every other
    # command read as the (empty) books.
    message = refusal({"REVSHARE_DATABASE_URL": URL, name: url})
    assert message.startswith(f"{name} {url!r} is an SQLite URI filename (uri=true, file:): give the file's path")


@pytest.mark.parametrize("url", ["sqlite:////srv/revshare/revshare.db\r", "sqlite:////srv/revshare/revshare.db ",
                                 " sqlite:////srv/revshare/revshare.db", "sqlite:////srv/revshare/revshare.db\t",
                                 "sqlite:////srv/revshare/rev\nshare.db", "postgresql://web@db.internal/revshare\r",
                                 "sqlite:////srv/revshare/revshare.db\x7f",
                                 "postgresql://ops/admin:s3cr3t@db.internal/revshare\r",
                                 "postgresql://web:p@s3cr3t?x@db.internal/revshare ",
                                 "postgresql://web@db.internal/revshare?password=abc@s3cr3t\n"])
@pytest.mark.parametrize("name", ["REVSHARE_DATABASE_URL", "REVSHARE_MIGRATION_DATABASE_URL"])
def test_a_url_with_spaces_around_it_or_a_control_character_is_refused_naming_the_variable_not_shown(name, url):
    # A `.env` saved with Windows line endings: `db upgrade` made a new, empty `revshare.db\r`. Not
    # shown: a URL the driver would read a password's piece from cannot be shown masked.
    message = refusal({"REVSHARE_DATABASE_URL": URL, name: url})
    control = next((repr(char) for char in url if ord(char) < 32 or ord(char) == 127), None)
    assert message.startswith(f"{name} has " + ("spaces around it" if control is None else
                                                f"a control character ({control}) in it")), message
    assert "s3cr3t" not in message and "revshare.db" not in message and "not shown" in message
    with pytest.raises(SettingsError, match=name):  # in code too: tests and benchmarks build settings
        Settings.build(**{"database_url": URL, name.removeprefix("REVSHARE_").lower(): url})


def test_a_path_s_space_percent_encoded_is_taken():
    url = "sqlite:////srv/revshare/books%20of%202026.db"
    assert Settings.from_env({"REVSHARE_DATABASE_URL": url}).database_url == url


@pytest.mark.parametrize("books, migrated", [
    (URL, "sqlite:////srv/revshare/other.db"),
    ("postgresql://app@db.internal/revshare", "postgresql://owner@db.internal/revshare_test"),
    ("postgresql://app@db.internal/?dbname=revshare", "postgresql://owner@db.internal/other"),  # libpq's dbname
    ("postgresql://app@db.internal/revshare", "sqlite:////srv/revshare/revshare.db"),
])
def test_a_migration_url_naming_another_database_is_refused(books, migrated):
    # `db upgrade` migrated that one, and every command then said to run `db upgrade` first, for ever.
    message = refusal({"REVSHARE_DATABASE_URL": books, "REVSHARE_MIGRATION_DATABASE_URL": migrated})
    assert message.startswith("REVSHARE_MIGRATION_DATABASE_URL names another database (")


@pytest.mark.parametrize("books, migrated", [
    (URL, "sqlite:////srv/revshare/../revshare/revshare.db"),
    ("postgresql://app@pooler.internal:6432/revshare", "postgresql://owner:s3c@db.internal:5432/revshare"),
    ("postgresql://app@db.internal/", "postgresql://owner@db.internal/revshare"),  # libpq picks the first's
    ("postgresql://app@db.internal/postgres?dbname=revshare", "postgresql://owner@db.internal/revshare"),
    ("postgresql://app@pgbouncer:6432/revshare_pool", "postgresql://owner@db.internal:5432/revshare"),  # an alias
])
def test_a_migration_url_of_the_same_database_by_another_role_host_or_port_is_taken(books, migrated):
    settings = Settings.from_env({"REVSHARE_DATABASE_URL": books, "REVSHARE_MIGRATION_DATABASE_URL": migrated})
    assert settings.migration_database_url == migrated


_SLASH = "holds a / in its user's name: write it as %2F"
_TWICE = "holds more than one @: write an @ of the user's name, password, database or a parameter as %40"
_AFTER_QUERY = "holds an @ after a ?: write an @ of a parameter's value as %40, and a ? of the password as %3F"


@pytest.mark.parametrize("url, refused", [
    # The driver took `ap` for the host and the rest, password too, for the database's name: the URL
    # was shown whole, with no password to mask.
    ("postgresql://ap/p:s3cTAIL@127.0.0.1:1/revshare?connect_timeout=1", _SLASH),
    ("postgres://a/p@db.internal/revshare", _SLASH),
    # The driver took what follows the first @ for the host (a `/` after it ending the host), and its
    # error named that host, a piece of the password; or a port that is a number was said not to be one.
    ("postgresql://web:p@ssw0rdTAIL@127.0.0.1:5432/revshare", _TWICE),
    ("postgresql+psycopg://web:p@ss:w0rdTAIL@db.internal:5432/revshare", _TWICE),
    ("postgres://we@b:s3cTAIL@db.internal/revshare", _TWICE),
    ("postgresql://web:Tr0ub4dor@s3cTAIL/x9@127.0.0.1:1/revshare", _TWICE),
    ("postgresql://revshare:Ab@s3cTAIL/staple?sslmode=require@db.internal/revshare", _TWICE),
    # With no credentials, an @ in a parameter's value is taken for the end of a password: what
    # follows, `password=` too, for the host.
    ("postgresql://db.internal:5432/revshare?application_name=rev@share&password=S3cTAIL", _AFTER_QUERY),
    ("postgresql://db.internal:5432/revshare?user=revshare&password=abc@def:s3cTAIL", _AFTER_QUERY),
    ("postgresql://ops/admin:pa?ss=w0rds3cTAIL@db.internal/revshare", _AFTER_QUERY),
    ("postgresql://web:p@sTAIL?x@127.0.0.1/revshare", _TWICE),
])
@pytest.mark.parametrize("name", ["REVSHARE_DATABASE_URL", "REVSHARE_MIGRATION_DATABASE_URL"])
def test_a_postgresql_url_the_driver_would_read_a_password_s_piece_from_is_refused_showing_none_of_it(name, url,
                                                                                                     refused):
    # The host the driver read was named in the error of every command and in the scheduler's log at
    # each retry, under a URL shown masked.
    message = refusal({"REVSHARE_DATABASE_URL": URL, name: url})
    assert message == f"{name} {refused}" and "TAIL" not in message


@pytest.mark.parametrize("url", ["postgresql://web:p%40ss@db.internal/revshare",
                                 "postgresql://a%2Fp:s/3c@db.internal/revshare",
                                 "postgresql://web:p%2Fs@db.internal/revs%40hare?application_name=a%40b",
                                 "postgresql://u:p@[::1]:5432/revshare", "postgresql://u:p#q@db.internal/revshare",
                                 "postgresql://db.internal/revshare?host=/var/run/postgresql"])
def test_a_postgresql_url_whose_at_and_slash_are_where_the_driver_reads_them_is_taken(url):
    assert Settings.from_env({"REVSHARE_DATABASE_URL": url}).database_url == url
