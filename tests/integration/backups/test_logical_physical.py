"""Logical and physical backups on real PostgreSQL: catalogued, checked, restored with constraints kept."""

from __future__ import annotations

import subprocess
import tempfile
from datetime import timedelta
from pathlib import Path

import pytest

from sensei_airflow.backups import jobs, logical, physical
from sensei_airflow.backups.catalog import BackupCatalog, render_listing
from sensei_airflow.backups.files import CorruptBackup
from sensei_airflow.backups.storage import storage_for
from sensei_airflow.engines.postgres import PostgresEngine
from sensei_airflow.engines.postgres.client import find_program
from sensei_airflow.state import StateStore
from tests.integration.backups.conftest import MIGRATED, checksums, fill_target, next_ids, structure


@pytest.fixture
def target(databases) -> PostgresEngine:
    fill_target(databases)
    return PostgresEngine("shop_target")


@pytest.fixture
def catalog(databases) -> BackupCatalog:
    return BackupCatalog(StateStore("sensei_state"))


def backup(target: PostgresEngine, catalog: BackupCatalog, location: str, **kwargs):
    return logical.take_logical_backup(
        engine=target, tables=MIGRATED, location=location, catalog=catalog, migration_id="mig_t",
        kind=kwargs.pop("kind", "pre_migration"), **kwargs,
    )  # fmt: skip


def test_logical_backup_is_catalogued_with_every_fact(databases, target, catalog, backup_dir) -> None:
    before = checksums(databases)
    entry = backup(target, catalog, str(backup_dir), retention_days=3)
    assert entry.backup_id.startswith("bkp_") and len(entry.backup_id) == 20
    stored = catalog.require(entry.backup_id)
    assert stored.status == "completed" and stored.type == "logical" and stored.migration_id == "mig_t"
    assert stored.tables == MIGRATED
    assert stored.expires_at - stored.created_at == timedelta(days=3)
    assert set(stored.files) == {"schema.archive", *(logical.data_file(t) for t in MIGRATED)}
    assert {t: s["file"] for t, s in stored.table_stats.items()} == {
        t: logical.data_file(t) for t in MIGRATED
    }
    assert stored.size_bytes == sum(f.size for f in stored.files.values()) > 0
    for name, record in stored.files.items():
        assert storage_for(stored.location).size(name) == record.size
    assert {t: (s["rows"], s["checksum"]) for t, s in stored.table_stats.items()} == before
    assert stored.table_stats["sales.orders"]["foreign_keys"] == [
        {"name": "orders_customer_id_fkey", "parent": "crm.customers"}
    ]
    assert (backup_dir / "mig_t" / entry.backup_id / "backup.json").is_file()
    assert entry.backup_id in render_listing(catalog.list("mig_t"))


def test_restore_brings_rows_back_and_keeps_constraints_and_sequences(databases, target, catalog, backup_dir):
    entry = backup(target, catalog, backup_dir.as_uri())
    before, shape, ids = checksums(databases), structure(databases), next_ids(databases)
    with databases.connect("target") as conn:
        conn.execute("DELETE FROM sales.order_items WHERE line_no < 50")
        conn.execute("INSERT INTO crm.customers (name, email_address, balance_cents, created_at) "
                     "SELECT 'new', 'new' || g, 1, now() FROM generate_series(1, 25) g")  # fmt: skip
        conn.execute("UPDATE sales.orders SET status = 'changed' WHERE id % 3 = 0")
    assert checksums(databases) != before

    statements, removed, restored = target.restore_tables(
        MIGRATED, entry.table_stats, logical.opener(entry), []
    )
    assert checksums(databases) == before
    assert structure(databases) == shape
    assert next_ids(databases) == ids
    assert restored == {t: before[t][0] for t in MIGRATED}
    assert removed["crm.customers"] == before["crm.customers"][0] + 25
    assert statements[-1].startswith("SELECT setval(")


def test_a_corrupted_file_aborts_the_whole_restore(databases, target, catalog, backup_dir):
    entry = backup(target, catalog, str(backup_dir))
    with databases.connect("target") as conn:
        conn.execute("DELETE FROM sales.order_items")
    changed = checksums(databases)
    path = backup_dir / "mig_t" / entry.backup_id / logical.data_file("sales.order_items")
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    assert any("sales.order_items" in p for p in logical.check_files(entry))
    with pytest.raises(CorruptBackup):
        target.restore_tables(MIGRATED, entry.table_stats, logical.opener(entry), [])
    assert checksums(databases) == changed  # customers and orders were loaded, then rolled back


def test_restore_test_in_a_scratch_database(databases, target, catalog, backup_dir):
    entry = backup(target, catalog, str(backup_dir))
    result = jobs.verify_backup(entry, catalog, restore_test=True)
    assert result["ok"], result
    assert set(result["restore_test"]["tables"]) == set(MIGRATED)
    assert all(t["ok"] for t in result["restore_test"]["tables"].values())
    assert catalog.require(entry.backup_id).status == "verified"
    with databases.connect("target") as conn:
        scratch = conn.execute(
            "SELECT count(*) FROM pg_database WHERE datname LIKE 'sensei_scratch_%'"
        ).fetchone()
    assert scratch[0] == 0  # dropped afterwards


def test_failed_backup_leaves_no_files_and_says_why(databases, target, catalog, backup_dir):
    with pytest.raises(Exception, match="no_such_table"):
        logical.take_logical_backup(
            engine=target, tables=[*MIGRATED, "sales.no_such_table"], location=str(backup_dir),
            catalog=catalog, migration_id="mig_t", kind="scheduled",
        )  # fmt: skip
    [entry] = catalog.list("mig_t")
    assert entry.status == "failed" and "no_such_table" in entry.error
    assert storage_for(str(backup_dir)).list("") == []


def test_prune_removes_files_and_entry_together(databases, target, catalog, backup_dir):
    old = backup(target, catalog, str(backup_dir))
    kept = backup(target, catalog, str(backup_dir))
    with databases.connect("state") as conn:
        conn.execute("UPDATE sensei.backups SET expires_at = now() - interval '1 hour' WHERE backup_id = %s",
                     (old.backup_id,))  # fmt: skip
    pruned = jobs.prune_expired(catalog)
    assert [(p["backup_id"], p["pruned"]) for p in pruned] == [(old.backup_id, True)]
    assert catalog.get(old.backup_id) is None
    assert not (backup_dir / "mig_t" / old.backup_id).exists()
    assert catalog.get(kept.backup_id) is not None
    assert logical.check_files(catalog.require(kept.backup_id)) == []


def test_interrupted_prune_is_finished_next_time(databases, target, catalog, backup_dir, monkeypatch):
    entry = backup(target, catalog, str(backup_dir))
    with databases.connect("state") as conn:
        conn.execute("UPDATE sensei.backups SET expires_at = now() - interval '1 day'")
    from sensei_airflow.backups.storage import FileStorage

    monkeypatch.setattr(
        FileStorage, "delete", lambda self, names: (_ for _ in ()).throw(OSError("disk busy"))
    )
    [record] = jobs.prune_expired(catalog)
    assert not record["pruned"] and "disk busy" in record["error"]
    assert catalog.require(entry.backup_id).status == "pruning"  # the entry stays while files remain
    monkeypatch.undo()
    [record] = jobs.prune_expired(catalog)
    assert record["pruned"] and catalog.get(entry.backup_id) is None
    assert storage_for(str(backup_dir)).list("") == []


def test_physical_base_backup_and_fetch(databases, target, catalog, backup_dir):
    entry = physical.take_base_backup(
        "shop_target", str(backup_dir), catalog, migration_id="mig_t", retention_days=1
    )
    assert entry.type == "physical" and entry.status == "completed"
    assert set(entry.files) == {"base.tar.zst", "pg_wal.tar.zst", "backup_manifest"}
    [wal_range] = entry.detail["wal_ranges"]
    assert wal_range["Start-LSN"] and wal_range["End-LSN"]
    with tempfile.TemporaryDirectory(prefix="sensei-fetch-") as scratch:
        data_dir = physical.fetch_base_backup(entry, Path(scratch) / "data")
        assert (data_dir / "PG_VERSION").is_file() and (data_dir / "pg_wal").is_dir()
        result = subprocess.run([str(find_program("pg_verifybackup")), "-n", str(data_dir)],
                                capture_output=True, text=True, check=False)  # fmt: skip
        assert result.returncode == 0, result.stderr


def test_restore_rebuilds_indexes_and_keeps_what_others_rely_on(databases, target, catalog, backup_dir):
    with databases.connect("target") as conn:
        conn.execute("CREATE INDEX orders_by_status ON sales.orders (status) WHERE status <> 'archived'")
        conn.execute("COMMENT ON INDEX sales.orders_by_status IS 'for the status board'")
        conn.execute("COMMENT ON CONSTRAINT orders_pkey ON sales.orders IS 'order number'")
        conn.execute("CREATE TABLE crm.notes (customer_id bigint REFERENCES crm.customers (id), note text)")
    entry = backup(target, catalog, str(backup_dir))
    before, shape = checksums(databases), structure(databases)
    with databases.connect("target") as conn:
        conn.execute("UPDATE sales.orders SET status = 'x' WHERE id % 2 = 0")
        customers_pkey = conn.execute("SELECT 'crm.customers_pkey'::regclass::oid").fetchone()[0]

    statements, _, _ = target.restore_tables(
        MIGRATED, entry.table_stats, logical.opener(entry), referenced_from_outside=["crm.customers"]
    )
    assert checksums(databases) == before
    assert structure(databases) == shape
    assert any(s.startswith("DROP INDEX sales.orders_by_status") for s in statements)
    with databases.connect("target") as conn:
        comments = conn.execute(
            "SELECT obj_description('sales.orders_by_status'::regclass, 'pg_class'), obj_description("
            "(SELECT oid FROM pg_constraint WHERE conname = 'orders_pkey'), 'pg_constraint')"
        ).fetchone()
        kept = conn.execute("SELECT 'crm.customers_pkey'::regclass::oid").fetchone()[0]
    assert comments == ("for the status board", "order number")
    assert kept == customers_pkey  # crm.notes' foreign key relies on it: left in place
