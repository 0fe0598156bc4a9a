"""PostgreSQL servers this worker runs itself: the scratch cluster of point-in-time recovery.

A recovered base backup is started as a scratch cluster with no TCP listener and a socket
folder only the server's OS user can enter (ADR 0504), replays the WAL archive to its target,
is promoted, and is always removed afterwards. :class:`Server` runs ``pg_ctl`` as the
``postgres`` OS user when the worker is root (the server refuses to run as root); the demo's
and the tests' throw-away clusters (:mod:`sensei_airflow.local_postgres`) build on it.
"""

from __future__ import annotations

import os
import pwd
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from sensei_airflow.engines.base import PointInTimeRefused, RecoveryTarget
from sensei_airflow.engines.postgres.client import INSTALL_HINT, ToolMissing, find_program

#: server settings of every scratch cluster: no TCP at all, a socket only its owner can reach.
PRIVATE_SOCKET_SETTINGS = {"listen_addresses": "", "unix_socket_permissions": "0700"}
#: the scratch cluster's authentication: local (socket) connections only; the socket's folder
#: (mode 0700, owned by the server's OS user) is what keeps everyone else out.
SCRATCH_HBA = "# sensei scratch cluster: no TCP; the socket folder is private (0700)\nlocal all all trust\n"
_STOP_LINE = re.compile(r"recovery stopping .*|recovery has paused.*|consistent recovery state reached.*")


class PostgresUnavailable(RuntimeError):
    """The PostgreSQL server programs are missing or a cluster could not start."""


def program(name: str, bin_dir: str | os.PathLike[str] | None = None) -> Path:
    """A server program (``initdb``, ``pg_ctl``, ``pg_controldata``).

    :raises PostgresUnavailable: when it is not installed.
    """
    try:
        return find_program(name, bin_dir)
    except ToolMissing as exc:
        raise PostgresUnavailable(str(exc)) from None


def as_postgres_user() -> list[str]:
    """The command prefix that runs a server program as the ``postgres`` OS user (empty unless root)."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise PostgresUnavailable(f"running as root needs the 'postgres' OS user: {INSTALL_HINT}") from None
    return ["runuser", "-u", "postgres", "--"]


def chown_to_postgres(path: Path) -> None:
    """Give ``path`` (recursively) to the ``postgres`` OS user, when the worker is root."""
    if os.geteuid() != 0:
        return
    owner = pwd.getpwnam("postgres")
    subprocess.run(["chown", "-R", f"{owner.pw_uid}:{owner.pw_gid}", str(path)], check=True)


def new_cluster_dir(prefix: str = "sensei-pg-") -> Path:
    """A fresh folder under ``SENSEI_PG_TMP`` (default ``/tmp``) that the ``postgres`` user can enter."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=os.environ.get("SENSEI_PG_TMP", "/tmp")))
    os.chmod(path, 0o755)
    return path


def _quote_option(value: str) -> str:
    return f"'{value}'" if not value or any(c in value for c in " %") else value


@dataclass
class Server:
    """One PostgreSQL server whose data directory is ``base_dir/data``, socket in ``base_dir/sock``.

    :param port: the TCP port (and, without TCP, the name of the socket file).
    :param settings: extra server settings (``-c name=value``), e.g. recovery targets.
    :param fast: fsync, full-page writes and synchronous commit off (throw-away clusters only).
    :param bin_dir: where the server programs are (found when None).
    """

    base_dir: Path
    port: int
    settings: dict[str, str] = field(default_factory=dict)
    fast: bool = True
    bin_dir: str | None = None

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def socket_dir(self) -> Path:
        return self.base_dir / "sock"

    @property
    def log_file(self) -> Path:
        return self.base_dir / "server.log"

    def _run(self, args: Sequence[str]) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([*as_postgres_user(), *args], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise PostgresUnavailable(
                f"{Path(args[0]).name} failed ({result.returncode}): {result.stderr.strip() or result.stdout.strip()}"
            )
        return result

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

    def start(self) -> Server:
        if self.is_running():
            return self
        pg_ctl = program("pg_ctl", self.bin_dir)
        self._run([str(pg_ctl), "-D", str(self.data_dir), "-l", str(self.log_file), "-w", "-t", "60",
                   "-o", self.server_options(), "start"])  # fmt: skip
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
        self._run([str(program("pg_ctl", self.bin_dir)), "-D", str(self.data_dir), "-m", mode, "-w", "stop"])

    def log_tail(self, lines: int = 8) -> str:
        """The server log's last lines, on one line."""
        try:
            text = self.log_file.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return ""
        return " | ".join(line.strip() for line in text[-lines:])

    def stop_line(self) -> str:
        """The log's last ``recovery stopping ...`` line: where recovery ended."""
        try:
            text = self.log_file.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        found = [m.group(0) for m in _STOP_LINE.finditer(text) if m.group(0).startswith("recovery stopping")]
        return found[-1] if found else ""


@dataclass
class RecoveredCluster:
    """A cluster recovered from a base backup to a target and promoted."""

    cluster: Server
    stopped_at: str

    def dsn(self, database: str, user: str) -> str:
        """Over the private socket (the scratch cluster has no TCP listener)."""
        return f"host={self.cluster.socket_dir} port={self.cluster.port} dbname={database} user={user}"


def scalar(conn: Any, sql: str) -> Any:
    row = conn.execute(sql).fetchone()
    assert row is not None, sql
    return row[0]


def remove_cluster(base_dir: Path) -> None:
    """Stop (immediately) whatever server runs in ``base_dir`` and delete the folder."""
    with suppress(Exception):
        Server(base_dir, 0).stop("immediate")
    shutil.rmtree(base_dir, ignore_errors=True)


def recover(
    base_dir: Path,
    fill: Callable[[Path], None],
    settings: dict[str, str],
    target: RecoveryTarget,
    *,
    port: int,
    user: str,
    timeout_seconds: float,
    fast: bool = True,
) -> RecoveredCluster:
    """A scratch cluster in ``base_dir``: ``fill(data_dir)`` copies a base backup in, the server
    replays the archive with the recovery ``settings`` to ``target``, promotes, and is waited for.

    :param timeout_seconds: how long recovery may take before it is given up.
    :raises PointInTimeRefused: when recovery cannot reach the target (a missing segment, a
        target before the backup became consistent); the server log's last lines say why.
    """
    if base_dir.exists():
        remove_cluster(base_dir)
    base_dir.mkdir(parents=True)
    os.chmod(base_dir, 0o755)
    data = base_dir / "data"
    fill(data)
    for leftover in ("postmaster.pid", "postmaster.opts", "standby.signal"):
        (data / leftover).unlink(missing_ok=True)
    # No TCP listener and no host line: only the server's OS user (and root) reach its socket
    # folder, so two scratch clusters never compete for a port and nobody else can connect.
    (data / "pg_hba.conf").write_text(SCRATCH_HBA, encoding="utf-8")
    (data / "recovery.signal").touch()
    os.chmod(data, 0o700)
    chown_to_postgres(base_dir)
    # the port only names the socket file inside the private folder
    cluster = Server(base_dir, port, settings={**settings, **PRIVATE_SOCKET_SETTINGS}, fast=fast)
    cluster.socket_dir.mkdir(exist_ok=True)
    os.chmod(cluster.socket_dir, 0o700)
    chown_to_postgres(cluster.socket_dir)
    try:
        cluster.start()
    except PostgresUnavailable as exc:
        raise PointInTimeRefused(
            f"recovery to {target.describe()} failed before the live target changed: {exc}; server log: "
            f"{cluster.log_tail()}"
        ) from None
    deadline = time.monotonic() + timeout_seconds
    while True:
        if not cluster.is_running():
            raise PointInTimeRefused(
                f"recovery to {target.describe()} failed before the live target changed; server log: "
                f"{cluster.log_tail()}"
            )
        try:
            with psycopg.connect(
                RecoveredCluster(cluster, "").dsn("postgres", user), connect_timeout=5
            ) as conn:
                in_recovery = scalar(conn, "SELECT pg_is_in_recovery()")
        except psycopg.OperationalError:
            in_recovery = True
        if not in_recovery:
            return RecoveredCluster(cluster, cluster.stop_line())
        if time.monotonic() > deadline:
            raise PointInTimeRefused(
                f"recovery to {target.describe()} did not finish within {timeout_seconds:g} s "
                "(rollback.point_in_time.postgres.recovery_timeout_seconds)"
            )
        time.sleep(0.1)


def postmaster_options(data_dir: Path) -> str:
    """The ``-c`` options the live server was started with (from ``postmaster.opts``), for restarting it."""
    opts = data_dir / "postmaster.opts"
    if not opts.is_file():
        return ""
    args = shlex.split(opts.read_text(encoding="utf-8").strip())[1:]
    kept: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
            continue
        if arg == "-D":
            skip = True
            continue
        kept.append(arg)
    return shlex.join(kept)
