"""A throwaway PostgreSQL cluster for tests and benchmarks.

PostgreSQL refuses to run as root, so when we are root the cluster is created and started as the
`postgres` user, in a fresh temporary directory, on a free loopback port, with durability switched
off (a test cluster need not survive a power cut). `stop()` shuts it down and removes the directory.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path


class ClusterUnavailable(RuntimeError):
    pass


def find_bin_dir() -> Path | None:
    """The server binaries on PATH, else the newest under /usr/lib/postgresql (by version: 15 after 9.6)."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version, reverse=True)
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.insert(0, str(Path(os.path.realpath(on_path)).parent))
    for directory in candidates:
        if (Path(directory) / "initdb").exists() and (Path(directory) / "pg_ctl").exists():
            return Path(directory)
    return None


def _version(bin_dir: str) -> tuple[int, ...]:
    """`/usr/lib/postgresql/9.6/bin` -> (9, 6); a directory not named by a version is tried last."""
    name = Path(bin_dir).parent.name
    return tuple(int(part) for part in name.split(".")) if all(p.isdigit() for p in name.split(".")) else ()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Cluster:
    def __init__(self) -> None:
        bin_dir = find_bin_dir()
        if bin_dir is None:
            raise ClusterUnavailable("no PostgreSQL server binaries (initdb, pg_ctl) found")
        self.bin_dir = bin_dir
        self.as_postgres = os.geteuid() == 0
        self.root = Path(tempfile.mkdtemp(prefix="revshare-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        if self.as_postgres:
            shutil.chown(self.root, user="postgres", group="postgres")
        self.started = False

    def _run(self, *args: str) -> None:
        command = [str(self.bin_dir / args[0]), *args[1:]]
        if self.as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise ClusterUnavailable(f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}")

    def start(self) -> "Cluster":
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync")
        return self.resume()

    def resume(self) -> "Cluster":
        """Start the server (again, after `pause`), on the same port and data."""
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.root / "log"), "-w", "start")
        self.started = True
        return self

    def pause(self) -> None:
        """Stop the server, keeping its data, as a database restarted or not yet up."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        self.started = False

    def url(self, database: str = "postgres", user: str = "postgres") -> str:
        return f"postgresql+psycopg://{user}@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        try:
            if self.started:
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
