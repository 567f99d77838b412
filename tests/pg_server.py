"""A real PostgreSQL server (Debian's postgresql-15 binaries) in a temporary data directory, on a
free loopback port, for the tests: ``with PostgresServer() as pg: pg.create_database("x")``.

initdb refuses to run as root; as root (CI) the server runs as the ``postgres`` user that the
Debian package creates, through ``runuser``. Trust authentication on 127.0.0.1 only; no Unix
socket. Nothing outside the temporary directory is touched.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

SUPERUSER = "mmagent"


def postgres_bindir() -> Path:
    """The directory of ``initdb``/``pg_ctl`` (Debian: /usr/lib/postgresql/<major>/bin)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    raise RuntimeError("PostgreSQL is not installed (initdb not found): run scripts/setup.sh, "
                       "which installs Debian's postgresql-15")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    def __init__(self) -> None:
        self.bindir = postgres_bindir()
        self.root = Path(tempfile.mkdtemp(prefix="mmagent-pg-"))
        self.datadir = self.root / "data"
        self.port = free_port()
        self._as_root = os.geteuid() == 0
        self.log = self.root / "postgres.log"

    def _cmd(self, *argv: str) -> list[str]:
        return (["runuser", "-u", "postgres", "--", *argv]) if self._as_root else list(argv)

    def start(self) -> PostgresServer:
        os.chmod(self.root, 0o755)
        if self._as_root:
            shutil.chown(self.root, "postgres", "postgres")
        subprocess.run(self._cmd(str(self.bindir / "initdb"), "-D", str(self.datadir), "-U", SUPERUSER,
                                 "--auth=trust", "--encoding=UTF8", "--no-instructions"),
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120)
        opts = (f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories='' "
                "-c max_connections=100 -c shared_buffers=32MB")
        subprocess.run(self._cmd(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-l", str(self.log),
                                 "-o", opts, "-w", "-t", "60", "start"),
                       check=True, stdout=subprocess.DEVNULL, timeout=90)
        return self

    @property
    def admin_url(self) -> str:
        return self.url("postgres")

    def url(self, database: str) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A fresh, empty database; its URL."""
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def execute(self, database: str, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        """Run one statement as the superuser (tests use it to look behind the store's back)."""
        import psycopg

        with psycopg.connect(self.url(database), autocommit=True) as conn:
            cur = conn.execute(sql, params)
            return list(cur.fetchall()) if cur.description else []

    def stop(self) -> None:
        if self.datadir.exists():
            subprocess.run(self._cmd(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", "immediate",
                                     "-w", "stop"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           timeout=60, check=False)
        for _ in range(20):   # the server's files are gone once its processes have exited
            try:
                shutil.rmtree(self.root)
                return
            except OSError:
                time.sleep(0.1)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
