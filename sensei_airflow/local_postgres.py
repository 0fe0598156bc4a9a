"""Throw-away local PostgreSQL clusters, for the demo and the tests.

Finds the server binaries (``pg_config --bindir``, ``/usr/lib/postgresql/*/bin``, ``PATH``), runs
them as the ``postgres`` OS user when started as root (``initdb`` refuses root), and keeps the
data directory and socket where that user can reach them.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

INSTALL_HINT = "install the PostgreSQL server (Debian/Ubuntu: apt-get install postgresql)"


class PostgresUnavailable(RuntimeError):
    """The PostgreSQL server binaries are missing or a cluster could not start."""


def find_bindir() -> Path:
    """The directory holding ``initdb`` and ``pg_ctl``."""
    candidates: list[str] = []
    if os.environ.get("SENSEI_PG_BINDIR"):
        candidates.append(os.environ["SENSEI_PG_BINDIR"])
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True)
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(str(Path(initdb).parent))
    for candidate in candidates:
        if (Path(candidate) / "initdb").is_file() and (Path(candidate) / "pg_ctl").is_file():
            return Path(candidate)
    raise PostgresUnavailable(f"PostgreSQL server binaries (initdb, pg_ctl) not found: {INSTALL_HINT}")


def _version_key(path: str) -> int:
    try:
        return int(Path(path).parent.name)
    except ValueError:
        return 0


def _as_postgres_user() -> list[str]:
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise PostgresUnavailable(f"running as root needs the 'postgres' OS user: {INSTALL_HINT}") from None
    return ["runuser", "-u", "postgres", "--"]


@dataclass
class LocalCluster:
    """One PostgreSQL cluster in ``base_dir`` listening on 127.0.0.1:``port``.

    :param settings: extra server settings (``-c name=value``), e.g. WAL archiving for PITR.
    """

    base_dir: Path
    port: int
    settings: dict[str, str] = field(default_factory=dict)
    fast: bool = True

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def socket_dir(self) -> Path:
        return self.base_dir / "sock"

    @property
    def log_file(self) -> Path:
        return self.base_dir / "server.log"

    def _run(self, args: Sequence[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        cmd = [*_as_postgres_user(), *args]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload]
        if result.returncode != 0:
            raise PostgresUnavailable(
                f"{Path(args[0]).name} failed ({result.returncode}): {result.stderr.strip() or result.stdout.strip()}"
            )
        return result

    def _prepare_dirs(self) -> None:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        os.chmod(self.base_dir, 0o755)
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            for path in (self.base_dir, self.socket_dir):
                os.chown(path, owner.pw_uid, owner.pw_gid)

    def init(self) -> LocalCluster:
        if (self.data_dir / "PG_VERSION").exists():
            return self
        self._prepare_dirs()
        bindir = find_bindir()
        self._run(
            [
                str(bindir / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "-N",
            ]
        )
        return self

    def server_options(self) -> str:
        options = {
            "port": str(self.port),
            "unix_socket_directories": str(self.socket_dir),
            "listen_addresses": "127.0.0.1",
        }
        if self.fast:
            options |= {"fsync": "off", "full_page_writes": "off", "synchronous_commit": "off"}
        options |= self.settings
        return " ".join(f"-c {name}={_quote_option(value)}" for name, value in options.items())

    def start(self) -> LocalCluster:
        self.init()
        if self.is_running():
            return self
        bindir = find_bindir()
        self._run(
            [
                str(bindir / "pg_ctl"),
                "-D",
                str(self.data_dir),
                "-l",
                str(self.log_file),
                "-w",
                "-t",
                "60",
                "-o",
                self.server_options(),
                "start",
            ]
        )
        return self

    def is_running(self) -> bool:
        pid_file = self.data_dir / "postmaster.pid"
        if not pid_file.exists():
            return False
        try:
            os.kill(int(pid_file.read_text().split()[0]), 0)
        except (ValueError, ProcessLookupError, PermissionError):
            return False
        return True

    def stop(self, mode: str = "fast") -> None:
        if not self.is_running():
            return
        self._run([str(find_bindir() / "pg_ctl"), "-D", str(self.data_dir), "-m", mode, "-w", "stop"])

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.base_dir, ignore_errors=True)

    def uri(self, database: str = "postgres", user: str = "postgres") -> str:
        """A connection URI usable as an Airflow connection (``AIRFLOW_CONN_...``)."""
        return f"postgresql://{quote(user)}@127.0.0.1:{self.port}/{quote(database)}"

    def dsn(self, database: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} dbname={database} user=postgres"

    def create_database(self, name: str) -> str:
        """Create (or re-create, empty) a database; returns its URI."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.uri(name)


def _quote_option(value: str) -> str:
    return f"'{value}'" if not value or any(c in value for c in " %") else value


def new_cluster_dir(prefix: str = "sensei-pg-") -> Path:
    """A fresh directory under the system temp dir that the ``postgres`` user can enter."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=os.environ.get("SENSEI_PG_TMP", "/tmp")))
    os.chmod(path, 0o755)
    return path


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
