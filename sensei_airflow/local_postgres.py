"""Throw-away local PostgreSQL clusters, for the demo and the tests.

Built on the production server control of :mod:`sensei_airflow.engines.postgres.cluster` (the
server programs found the same way, run as the ``postgres`` OS user when started as root,
since ``initdb`` refuses root); this module adds ``initdb``, a TCP listener on 127.0.0.1 and
the connection strings a test or the demo hands to Airflow.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
from dataclasses import dataclass
from urllib.parse import quote

import psycopg
from psycopg import sql

from sensei_airflow.engines.postgres.cluster import PostgresUnavailable, Server, new_cluster_dir, program

__all__ = ["LocalCluster", "PostgresUnavailable", "free_port", "new_cluster_dir"]


@dataclass
class LocalCluster(Server):
    """One PostgreSQL cluster in ``base_dir`` listening on 127.0.0.1:``port``, created on first start.

    :param settings: extra server settings (``-c name=value``), e.g. WAL archiving for PITR.
    """

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
        initdb = program("initdb", self.bin_dir)
        self._run([str(initdb), "-D", str(self.data_dir), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                   "--locale=C.UTF-8", "-N"])  # fmt: skip
        return self

    def start(self) -> LocalCluster:
        self.init()
        super().start()
        return self

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
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.uri(name)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
