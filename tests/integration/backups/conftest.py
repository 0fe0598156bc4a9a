"""Fixtures of the backup tests: a local S3 (moto server), backup folders, and a demo migration with a pre-migration backup.

The e2e backup tests import these fixtures from here.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures import aws_client, use_aws_connection

#: rows that the target tables hold before the demo migration (ids far above the demo's).
PRE_EXISTING = {
    "crm.customers": "INSERT INTO crm.customers (id, name, email_address, balance_cents, created_at) "
    "SELECT g, 'old ' || g, 'old' || g || '@example.com', g * 10, '2024-01-01' FROM generate_series(900001, 900040) g",
    "sales.orders": "INSERT INTO sales.orders (id, customer_id, status, total, ordered_at) "
    "SELECT g, 900001 + g % 40, 'archived', g % 97, '2024-02-01' FROM generate_series(900001, 900100) g",
    "sales.order_items": "INSERT INTO sales.order_items (order_id, line_no, product, qty, price) "
    "SELECT 900001 + g % 100, g, 'legacy', 1, 9.99 FROM generate_series(1, 150) g",
}
MIGRATED = ["crm.customers", "sales.orders", "sales.order_items"]


@pytest.fixture(scope="session")
def s3_server(moto_endpoint: str) -> str:
    """The local S3 (the session's moto server); its endpoint URL."""
    return moto_endpoint


@pytest.fixture
def s3_bucket(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket on the local S3, reachable through the ``aws_default`` Airflow connection."""
    import uuid

    use_aws_connection(monkeypatch, "aws_default", s3_server)
    name = f"backups-{uuid.uuid4().hex[:10]}"
    aws_client("s3", s3_server).create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def gcs_server() -> Iterator[str]:
    """A GCS API emulator (gcp-storage-emulator) for the session; its endpoint URL."""
    from gcp_storage_emulator.server import create_server

    server = create_server("127.0.0.1", 0, in_memory=True)
    server.start()
    yield f"http://127.0.0.1:{server._api._httpd.server_address[1]}"
    server.stop()


@pytest.fixture
def gcs_bucket(gcs_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket on the GCS emulator, reachable through ``google_cloud_default`` (anonymous)."""
    import uuid

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_server)
    monkeypatch.setenv(
        "AIRFLOW_CONN_GOOGLE_CLOUD_DEFAULT",
        json.dumps(
            {"conn_type": "google_cloud_platform", "extra": {"is_anonymous": True, "project": "test"}}
        ),
    )
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    name = f"backups-{uuid.uuid4().hex[:10]}"
    storage.Client(project="test", credentials=AnonymousCredentials()).create_bucket(name)
    return name


@pytest.fixture
def backup_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "backups"
    folder.mkdir()
    return folder


def fill_target(databases: Any) -> None:
    """Create the demo's target tables and put rows in them that predate the migration."""
    from sensei_airflow.demo.shop import TARGET_DDL

    with databases.connect("target") as conn, conn.transaction():
        conn.execute(TARGET_DDL)
        for sql in PRE_EXISTING.values():
            conn.execute(sql)


def checksums(databases: Any, tables: list[str] | None = None) -> dict[str, tuple[int, str]]:
    """Rows and order-independent checksum of each table, straight from the target."""
    result = {}
    with databases.connect("target") as conn:
        for table in tables or MIGRATED:
            rows, digest = conn.execute(
                # the record hash, as recorded for tables whose column types all have one (ADR 0101)
                f"SELECT count(*), 'record:' || coalesce(sum(hash_record_extended(t, 0)), 0)::text FROM {table} t"  # noqa: S608
            ).fetchone()
            result[table] = (rows, digest)
    return result


def structure(databases: Any) -> dict[str, Any]:
    """Constraints, indexes and sequences of the migrated tables (what a restore must keep)."""
    with databases.connect("target") as conn:
        constraints = conn.execute(
            "SELECT conrelid::regclass::text, conname, contype, pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE connamespace IN ('crm'::regnamespace, 'sales'::regnamespace) ORDER BY 1, 2"
        ).fetchall()
        indexes = conn.execute(
            "SELECT indexrelid::regclass::text, pg_get_indexdef(indexrelid) FROM pg_index "
            "WHERE indrelid IN ('crm.customers'::regclass, 'sales.orders'::regclass, 'sales.order_items'::regclass) "
            "ORDER BY 1"
        ).fetchall()
    return {"constraints": constraints, "indexes": indexes}


def next_ids(databases: Any) -> dict[str, int]:
    """What the identity sequences would hand out next (peeked without consuming)."""
    result = {}
    with databases.connect("target") as conn:
        for table in ("crm.customers", "sales.orders"):
            sequence = conn.execute("SELECT pg_get_serial_sequence(%s, 'id')", (table,)).fetchone()[0]
            last, called = conn.execute(f"SELECT last_value, is_called FROM {sequence}").fetchone()  # noqa: S608
            result[table] = last + 1 if called else last
    return result
