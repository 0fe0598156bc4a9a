"""PostgreSQL clusters with WAL archiving, for the point-in-time recovery tests (integration and e2e)."""

from __future__ import annotations

import os
import pwd
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from sensei_airflow.engines.postgres.basebackup import BaseBackup, take_base_backup
from sensei_airflow.local_postgres import LocalCluster, PostgresUnavailable, free_port, new_cluster_dir


def _postgres_owned(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o755)
    if os.geteuid() == 0:
        owner = pwd.getpwnam("postgres")
        os.chown(path, owner.pw_uid, owner.pw_gid)
    return path


@dataclass
class ArchivingCluster:
    """A live cluster archiving its WAL into ``archive``, with base backups in ``backups``."""

    root: Path
    cluster: LocalCluster
    archive: Path
    backups: Path
    scratch: Path

    def connect(self, database: str = "postgres") -> Any:
        import psycopg

        return psycopg.connect(self.cluster.dsn(database), autocommit=True)

    def hook(self) -> Any:
        """A ``PostgresHook`` on the cluster (no Airflow connection id needed)."""
        from airflow.providers.postgres.hooks.postgres import PostgresHook
        from airflow.sdk import Connection

        live = Connection(conn_id="pitr_live", conn_type="postgres", host="127.0.0.1", port=self.cluster.port,
                          login="postgres", schema="postgres")  # fmt: skip
        return PostgresHook(connection=live)

    def base_backup(self) -> BaseBackup:
        return take_base_backup(self.hook(), self.backups)

    def now(self, database: str = "postgres") -> datetime:
        """The server's clock, then a short pause so later commits are strictly after it."""
        with self.connect(database) as conn:
            stamp = conn.execute("SELECT clock_timestamp()").fetchone()[0]
        time.sleep(0.02)
        return stamp

    def settings(self, **overrides: Any) -> dict[str, Any]:
        """The manifest's ``rollback.point_in_time.postgres`` block for this cluster."""
        return {
            "wal_archive": str(self.archive),
            "base_backups": str(self.backups),
            "scratch_dir": str(self.scratch),
            "archive_wait_seconds": 30,
            "recovery_timeout_seconds": 120,
            **overrides,
        }

    def scratch_leftovers(self) -> list[str]:
        return sorted(p.name for p in self.scratch.iterdir()) if self.scratch.exists() else []


@contextmanager
def archiving_cluster(prefix: str = "sensei-pitr-") -> Iterator[ArchivingCluster]:
    """Start a cluster with wal_level=replica, archive_mode=on and an archive_command; always stopped."""
    root = new_cluster_dir(prefix)
    archive = _postgres_owned(root / "archive")
    cluster = LocalCluster(
        root / "live",
        free_port(),
        settings={
            "wal_level": "replica",
            "archive_mode": "on",
            "archive_command": f"test ! -f {archive}/%f && cp %p {archive}/%f",
            "max_wal_senders": "4",
        },
    )
    try:
        try:
            cluster.start()
        except PostgresUnavailable as exc:
            pytest.fail(f"PostgreSQL with WAL archiving is needed and could not start: {exc}", pytrace=False)
        yield ArchivingCluster(root, cluster, archive, root / "backups", root / "scratch")
    finally:
        cluster.destroy()
        shutil.rmtree(root, ignore_errors=True)
