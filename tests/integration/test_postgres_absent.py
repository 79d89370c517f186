"""What the suite does on a machine without PostgreSQL server binaries (README, Quick start): the
PostgreSQL tests skip with a loud warning, except under CI=true, where they fail. Each case runs one
PostgreSQL test in a pytest of its own, with the binaries hidden from `tests/pg_cluster.py`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]
A_POSTGRES_TEST = "tests/integration/test_journal.py::test_verify_on_an_empty_journal_is_clean[postgres]"
HIDE_BINARIES = "import tests.pg_cluster\ntests.pg_cluster.find_bin_dir = lambda: None\n"


def run_without_postgres(tmp_path: Path, *, ci: bool) -> subprocess.CompletedProcess:
    (tmp_path / "hide_postgres_binaries.py").write_text(HIDE_BINARIES)
    environment = {name: value for name, value in os.environ.items() if name not in ("CI", "PYTHONPATH")}
    environment["PYTHONPATH"] = os.pathsep.join([str(REPOSITORY), str(tmp_path)])
    environment["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"  # schemathesis' plugin alone takes seconds to load
    if ci:
        environment["CI"] = "true"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "hide_postgres_binaries",
         A_POSTGRES_TEST],
        cwd=REPOSITORY, env=environment, capture_output=True, text=True, timeout=120)


def test_without_postgresql_binaries_its_tests_skip_with_a_warning_naming_why(tmp_path):
    run = run_without_postgres(tmp_path, ci=False)
    assert run.returncode == 0, run.stdout[-3000:]
    assert run.stdout.splitlines()[-1].startswith("1 skipped, 1 warning in"), run.stdout[-3000:]
    warnings_summary = run.stdout.split("warnings summary", 1)[1]
    assert "PytestWarning: PostgreSQL TESTS SKIPPED: no PostgreSQL server binaries" in warnings_summary


def test_without_postgresql_binaries_under_ci_its_tests_fail(tmp_path):
    run = run_without_postgres(tmp_path, ci=True)
    assert run.returncode == 1, run.stdout[-3000:]
    assert run.stdout.splitlines()[-1].startswith("1 error in"), run.stdout[-3000:]
    assert "CI=true and PostgreSQL cannot start: no PostgreSQL server binaries" in run.stdout, run.stdout[-3000:]


def test_the_newest_installed_postgresql_is_found_by_version_not_by_name(tmp_path, monkeypatch):
    """README, Quick start: "else the newest under /usr/lib/postgresql". As names, 9.6 sorted after 15."""
    from tests import pg_cluster

    for version in ("9.6", "15", "10"):
        directory = tmp_path / version / "bin"
        directory.mkdir(parents=True)
        for binary in ("initdb", "pg_ctl"):
            (directory / binary).touch()
    monkeypatch.setattr(pg_cluster.glob, "glob", lambda pattern: [str(p) for p in tmp_path.glob("*/bin")])
    monkeypatch.setattr(pg_cluster.shutil, "which", lambda name: None)
    assert pg_cluster.find_bin_dir() == tmp_path / "15" / "bin"
