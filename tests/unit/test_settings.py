"""`Settings.from_env`: what it refuses, and how it names the variable, without a database."""

import pytest

from ledger.settings import Settings, SettingsError

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
