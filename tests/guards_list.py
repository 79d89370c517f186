"""`python -m tests.guards_list` (or `make guards`): write `ledger/guards_at_head.py` from an SQLite
file and a throwaway PostgreSQL cluster, each migrated to head, after a migration that makes, drops
or changes a trigger (`tests/integration/test_guards.py` fails until then)."""

import tempfile
from pathlib import Path

from ledger import guards
from ledger.migrate import upgrade
from tests.pg_cluster import Cluster


def main() -> None:
    with tempfile.TemporaryDirectory() as directory:
        sqlite_url = f"sqlite:///{Path(directory) / 'guards.db'}"
        upgrade(sqlite_url)
        cluster = Cluster()
        cluster.start()
        try:
            postgres_url = cluster.url()
            upgrade(postgres_url)
            guards.write(sqlite_url, postgres_url)
        finally:
            cluster.stop()
    print("wrote ledger/guards_at_head.py")


if __name__ == "__main__":
    main()
