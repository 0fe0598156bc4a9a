"""Physical backups: a base backup of the target's whole cluster, stored and catalogued.

This is the entry point shared with point-in-time recovery::

    entry = take_base_backup(conn_id, "s3://bucket/base/", catalog, migration_id="mig_x")
    fetch_base_backup(entry, Path("/restore/data"))   # then add recovery settings and start

Layout below the backup's own folder (``<location>/<migration_id>/<backup_id>/``)::

    base.tar.zst       the data directory (pg_basebackup -Ft, fast checkpoint)
    pg_wal.tar.zst     the WAL needed to make it consistent (streamed alongside)
    backup_manifest    pg_basebackup's manifest (SHA-256 per file: pg_verifybackup checks it)

The catalog entry records each file's sha256, and in ``detail`` the WAL range of the backup
(``wal_ranges``: timeline, start and end LSN) and the cluster's system identifier.
"""

from __future__ import annotations

import json
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from sensei_airflow.backups.catalog import BackupCatalog, BackupEntry, BackupKind, FileRecord, new_backup_id
from sensei_airflow.backups.files import open_stored, store
from sensei_airflow.backups.logical import _remove, backup_folder
from sensei_airflow.backups.storage import storage_for
from sensei_airflow.redaction import redact_error

MANIFEST_FILE = "backup_manifest"


def take_base_backup(
    conn_id: str,
    location: str,
    catalog: BackupCatalog,
    *,
    migration_id: str,
    kind: BackupKind = "scheduled",
    retention_days: float = 30,
    side: str = "target",
) -> BackupEntry:
    """Take a base backup of the cluster behind ``conn_id``, store it at ``location`` and catalog it.

    The tars are staged in a local temporary folder (``pg_basebackup`` streams WAL beside the
    data, which it cannot do to one pipe), then streamed, compressed, to storage.

    :returns: the completed catalog entry (``type="physical"``).
    """
    from sensei_airflow.engines import get_engine

    engine = get_engine(conn_id)
    storage_for(location).check_reachable()
    backup_id = new_backup_id()
    folder = backup_folder(location, migration_id, backup_id)
    storage = storage_for(folder)
    catalog.start(
        backup_id=backup_id, migration_id=migration_id, kind=kind, type="physical", side=side,
        conn_id=conn_id, database=engine.identity(), location=folder, tables=[], retention_days=retention_days,
    )  # fmt: skip
    files: dict[str, FileRecord] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="sensei-basebackup-") as scratch:
            staged = engine.base_backup(Path(scratch) / "base")
            detail: dict[str, Any] = {}
            for path in staged:
                compress = path.name != MANIFEST_FILE
                name = f"{path.name}.zst" if compress else path.name
                with open(path, "rb") as source:
                    files[name] = store(storage, name, source, compress=compress)
                if path.name == MANIFEST_FILE:
                    manifest = json.loads(path.read_text())
                    detail["wal_ranges"] = manifest.get("WAL-Ranges", [])
        detail["cluster"] = (engine.identity().split(":", 1)[-1]).split("/", 1)[0]
        return catalog.complete(backup_id, files=files, table_stats={}, detail=detail)
    except BaseException as exc:
        left = _remove(storage, list(files))
        catalog.fail(backup_id, redact_error(exc), files={n: files[n] for n in left})
        raise


def fetch_base_backup(entry: BackupEntry, data_dir: Path) -> Path:
    """Download, check (sha256 of every file) and unpack a base backup into an empty ``data_dir``.

    ``pg_wal.tar`` goes to ``data_dir/pg_wal``, ``backup_manifest`` beside the data (so
    ``pg_verifybackup data_dir`` works). Ownership and permissions for the server are the
    caller's business.

    :raises ValueError: for a logical backup, a non-empty folder, or extra tablespaces.
    :raises CorruptBackup: when a file does not match its catalog entry.
    """
    if entry.type != "physical":
        raise ValueError(f"backup {entry.backup_id} is {entry.type}, not a base backup")
    extra = [n for n in entry.files if n not in ("base.tar.zst", "pg_wal.tar.zst", MANIFEST_FILE)]
    if extra:
        raise ValueError(
            f"backup {entry.backup_id} has extra tablespaces ({', '.join(extra)}): not supported"
        )
    data_dir.mkdir(parents=True, exist_ok=True)
    if any(data_dir.iterdir()):
        raise ValueError(f"{data_dir} is not empty")
    storage = storage_for(entry.location)
    for name, destination in (("base.tar.zst", data_dir), ("pg_wal.tar.zst", data_dir / "pg_wal")):
        destination.mkdir(exist_ok=True)
        with open_stored(storage, name, entry.files[name]) as reader:
            stream: Any = reader
            with tarfile.open(fileobj=stream, mode="r|") as tar:
                tar.extractall(destination, filter="data")
    with (
        open_stored(storage, MANIFEST_FILE, entry.files[MANIFEST_FILE], compressed=False) as reader,
        open(data_dir / MANIFEST_FILE, "wb") as out,
    ):
        while chunk := reader.read(1 << 20):
            out.write(chunk)
    data_dir.chmod(0o700)
    return data_dir
