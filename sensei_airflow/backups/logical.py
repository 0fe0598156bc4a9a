"""Logical backups: each table's rows (binary COPY, zstd) plus one archive of the tables' definitions.

Layout below the backup's own folder (``<location>/<migration_id>/<backup_id>/``)::

    data/<name>-<hash>.copy.zst      one per table, all read from one snapshot (names.file_stem)
    schema.archive                   the engine's definition archive (pg_dump custom format)
    backup.json                      the catalog entry, so the folder explains itself

The catalog entry holds the sha256 and size of every file and the rows and checksum of every
table, taken in the same snapshot as the data, and the file of each table (``table_stats[t]["file"]``):
a restore reads that, never a name derived again, so backups of any naming stay readable.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sensei_airflow.backups.catalog import BackupCatalog, BackupEntry, BackupKind, FileRecord, new_backup_id
from sensei_airflow.backups.files import CorruptBackup, check_file, open_stored, store
from sensei_airflow.backups.storage import Readable, Storage, storage_for
from sensei_airflow.names import file_stem
from sensei_airflow.redaction import redact_error

log = logging.getLogger(__name__)

SCHEMA_FILE = "schema.archive"
META_FILE = "backup.json"


def data_file(table: str) -> str:
    """The data file of a (qualified) table: a sanitised name plus a short hash of the exact name.

    Never the raw name: a table named ``../x`` or ``a/b`` stays inside ``data/``, and two names that
    sanitise alike (``a b`` and ``a_b``) get two files.
    """
    return f"data/{file_stem(table)}.copy.zst"


def backup_folder(location: str, migration_id: str, backup_id: str) -> str:
    return storage_for(location).url_of(f"{migration_id}/{backup_id}")


def take_logical_backup(
    *,
    engine: Any,
    tables: Sequence[str],
    location: str,
    catalog: BackupCatalog,
    migration_id: str,
    kind: BackupKind,
    side: str = "target",
    retention_days: float = 30,
) -> BackupEntry:
    """Back up ``tables`` of ``engine`` to ``location`` and catalog it; returns the completed entry.

    The entry is recorded as ``running`` first. On any failure the files written so far are
    deleted and the entry is marked ``failed`` (listing any file that could not be deleted, for
    pruning to finish), and the error is raised.
    """
    tables = [engine.qualify(t) for t in tables]
    storage_for(location).check_reachable()
    backup_id = new_backup_id()
    folder = backup_folder(location, migration_id, backup_id)
    storage = storage_for(folder)
    catalog.start(
        backup_id=backup_id, migration_id=migration_id, kind=kind, type="logical", side=side,
        conn_id=engine.conn_id, database=engine.identity(), location=folder, tables=tables,
        retention_days=retention_days,
    )  # fmt: skip
    files: dict[str, FileRecord] = {}
    try:

        def write(table: str, stream: Readable) -> None:
            files[data_file(table)] = store(storage, data_file(table), stream)

        states = engine.dump_tables(tables, write)
        with tempfile.TemporaryDirectory(prefix="sensei-backup-") as scratch:
            archive = Path(scratch) / SCHEMA_FILE
            engine.dump_schema(tables, archive)
            with open(archive, "rb") as source:
                files[SCHEMA_FILE] = store(storage, SCHEMA_FILE, source, compress=False)
        table_stats = {t: {**asdict(states[t]), "file": data_file(t)} for t in tables}
        entry = catalog.complete(backup_id, files=files, table_stats=table_stats)
        with storage.open_write(META_FILE) as out:
            out.write(json.dumps(entry.model_dump(mode="json"), indent=2, sort_keys=True).encode())
        return entry
    except BaseException as exc:
        left = _remove(storage, [*files, META_FILE])
        catalog.fail(backup_id, redact_error(exc), files={n: files[n] for n in left if n in files})
        raise


def _remove(storage: Storage, names: list[str]) -> list[str]:
    """Delete files; the names that could not be deleted."""
    try:
        storage.delete(names)
        storage.discard()
    except Exception:
        log.exception("could not delete the files of a failed backup; pruning will")
        return names
    return []


def opener(entry: BackupEntry) -> Callable[[str], AbstractContextManager[Readable]]:
    """``open_data(table)`` for a restore: the table's rows, decompressed, checked against the catalog."""
    storage = storage_for(entry.location)

    def open_data(table: str) -> AbstractContextManager[Readable]:
        name = entry.table_stats[table]["file"]
        return open_stored(storage, name, entry.files[name])

    return open_data


def check_files(entry: BackupEntry) -> list[str]:
    """Re-read every file of the backup; one problem per missing or corrupted file."""
    storage = storage_for(entry.location)
    problems = []
    for name, record in sorted(entry.files.items()):
        problem = check_file(storage, name, record)
        if problem:
            problems.append(problem)
    return problems


def restore_test(entry: BackupEntry, engine: Any) -> dict[str, Any]:
    """Restore the backup into a scratch database on ``engine``'s server and compare with the catalog.

    :returns: ``{"ok", "tables": {table: {expected, actual, ok}}, "problems"}``.
    """
    storage = storage_for(entry.location)
    with tempfile.TemporaryDirectory(prefix="sensei-restore-test-") as scratch:
        archive = Path(scratch) / SCHEMA_FILE
        try:
            with (
                open_stored(storage, SCHEMA_FILE, entry.files[SCHEMA_FILE], compressed=False) as source,
                open(archive, "wb") as out,
            ):
                while chunk := source.read(1 << 20):
                    out.write(chunk)
            restored = engine.restore_test(entry.tables, entry.table_stats, archive, opener(entry))
        except CorruptBackup as exc:
            return {"ok": False, "tables": {}, "problems": [str(exc)]}
    tables = {}
    problems = []
    for table in entry.tables:
        expected = entry.table_stats[table]
        actual = restored[table]
        ok = actual.rows == expected["rows"] and actual.checksum == expected["checksum"]
        tables[table] = {
            "expected": {"rows": expected["rows"], "checksum": expected["checksum"]},
            "actual": {"rows": actual.rows, "checksum": actual.checksum},
            "ok": ok,
        }
        if not ok:
            problems.append(
                f"{table} restored with {actual.rows} rows / checksum {actual.checksum}, the catalog "
                f"recorded {expected['rows']} / {expected['checksum']}"
            )
    return {"ok": not problems, "tables": tables, "problems": problems}
