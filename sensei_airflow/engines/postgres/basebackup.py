"""PostgreSQL base backups: taking them with ``pg_basebackup``, reading and unpacking them.

Shared by the physical backups (:mod:`sensei_airflow.backups.physical`, tar format, through
``PostgresEngine.base_backup``) and point-in-time recovery (:mod:`.pitr`, which replays the
WAL archive onto the newest base backup before the point; ADR 0104). ``pg_basebackup`` gets the
engine's credentials from its ``PostgresHook`` (:mod:`.client`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from contextlib import suppress
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sensei_airflow.engines.postgres.client import client_login, find_program, run

#: written beside each base backup taken by :func:`take_base_backup`.
BACKUP_INFO = "sensei-base-backup.json"


def pg_basebackup(hook: Any, directory: Path, *, tar: bool) -> None:
    """``pg_basebackup`` of the hook's whole cluster into ``directory`` (created by it, or empty).

    Fast checkpoint, WAL streamed alongside, and a ``backup_manifest`` with SHA-256 checksums
    that ``pg_verifybackup`` can check. Needs a role with the REPLICATION attribute and a
    ``replication`` entry in ``pg_hba.conf``.

    :param hook: the ``PostgresHook`` whose connection (and credentials) reach the cluster.
    :param tar: tar format (``base.tar``, ``pg_wal.tar``, a tar per extra tablespace) instead of
        plain (the data directory itself).
    """
    args = [str(find_program("pg_basebackup")), "-D", str(directory), "-F" + ("t" if tar else "p"),
            "-X", "stream", "-c", "fast", "--manifest-checksums=SHA256", "--no-password"]  # fmt: skip
    with client_login(hook, dbname="replication") as login:
        run([*args, "-d", login.conninfo], login.env, "pg_basebackup")


def tar_backup(hook: Any, directory: Path) -> list[Path]:
    """A tar-format base backup into ``directory`` (must be empty); the files written.

    :returns: ``base.tar``, ``pg_wal.tar``, ``backup_manifest`` and a tar per extra tablespace.
    """
    directory.mkdir(parents=True, exist_ok=True)
    if any(directory.iterdir()):
        raise ValueError(f"base backup folder {directory} is not empty")
    os.chmod(directory, 0o700)
    pg_basebackup(hook, directory, tar=True)
    return sorted(p for p in directory.iterdir() if p.is_file())


def take_base_backup(hook: Any, folder: str | os.PathLike[str], name: str | None = None) -> BaseBackup:
    """A plain-format base backup into ``folder/name``, the layout point-in-time recovery reads.

    For tests, the benchmark and targets without the backup DAG (whose tar-format backups serve
    as well). Writes ``<name>.sensei-base-backup.json`` beside it with the end time.

    :param hook: the ``PostgresHook`` of the live cluster.
    """
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    name = name or datetime.now(UTC).strftime("base-%Y%m%dT%H%M%S%fZ")
    dest = root / name
    try:
        pg_basebackup(hook, dest, tar=False)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    info = {"end_time": datetime.now(UTC).isoformat(), "tool": "pg_basebackup -Fp -X stream"}
    (root / f"{name}.{BACKUP_INFO}").write_text(json.dumps(info), encoding="utf-8")
    backup = read_base_backup(dest)
    assert backup is not None, f"pg_basebackup wrote no backup_label in {dest}"
    return backup


def unpack(backup: BaseBackup, data: Path) -> None:
    """Copy a base backup into the new data directory ``data``: a plain folder as it is, tars extracted."""
    base_tar = tar_member(backup.path, "base.tar*")
    if base_tar is None:
        subprocess.run(["cp", "-a", str(backup.path), str(data)], check=True)
        return
    data.mkdir()
    subprocess.run(["tar", "-xf", str(base_tar), "-C", str(data)], check=True)
    wal_tar = tar_member(backup.path, "pg_wal.tar*")
    if wal_tar is not None:
        subprocess.run(["tar", "-xf", str(wal_tar), "-C", str(data / "pg_wal")], check=True)


@dataclass(frozen=True)
class BaseBackup:
    """One plain-format base backup: where it is, and the WAL range and times it covers."""

    path: Path
    start_time: datetime
    end_time: datetime
    start_lsn: int
    end_lsn: int | None
    timeline: int
    start_wal_file: str

    @property
    def name(self) -> str:
        return self.path.name


def parse_lsn(text: str) -> int:
    high, low = text.split("/")
    return (int(high, 16) << 32) | int(low, 16)


def format_lsn(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def _label_time(text: str) -> datetime:
    # backup_label: "START TIME: 2026-11-25 01:00:00 UTC" (server zone abbreviation)
    stamp, _, zone = text.strip().rpartition(" ")
    parsed = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S")
    if zone in ("UTC", "GMT", "Z"):
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)  # unknown abbreviation: the local zone is the best guess


def tar_member(path: Path, pattern: str) -> Path | None:
    """The first file of a backup folder matching ``pattern`` (``base.tar*``), or None."""
    found = sorted(path.glob(pattern))
    return found[0] if found else None


def _backup_label(path: Path) -> str | None:
    """The ``backup_label`` of a plain backup folder, or of a tar-format one (``base.tar[.gz]``)."""
    label_file = path / "backup_label"
    if label_file.is_file():
        return label_file.read_text(encoding="utf-8", errors="replace")
    base_tar = tar_member(path, "base.tar*")
    if base_tar is None:
        return None
    for member in ("backup_label", "./backup_label"):  # GNU tar reads .tar, .tar.gz, .tar.zst alike
        found = subprocess.run(["tar", "-xOf", str(base_tar), member], capture_output=True, check=False)
        if found.returncode == 0:
            return found.stdout.decode("utf-8", errors="replace")
    return None


def read_base_backup(path: Path) -> BaseBackup | None:
    """Describe a base backup folder, or None if it is not one (no ``backup_label``).

    Both layouts of ``pg_basebackup`` are read: plain (``-Fp``: the data directory itself) and
    tar (``-Ft``: ``base.tar`` and ``pg_wal.tar``, optionally compressed, e.g. the
    ``base.tar.zst`` + ``pg_wal.tar.zst`` folders :mod:`sensei_airflow.backups.physical` stores).
    """
    label = _backup_label(path)
    if label is None:
        return None
    fields: dict[str, str] = {}
    for line in label.splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    location = fields.get("START WAL LOCATION", "")  # "0/2000028 (file 000000010000000000000002)"
    match = re.match(r"([0-9A-F]+/[0-9A-F]+) \(file ([0-9A-F]{24})\)", location)
    if not match:
        return None
    start_lsn, wal_file = parse_lsn(match.group(1)), match.group(2)
    start_time = _label_time(fields.get("START TIME", "1970-01-01 00:00:00 UTC"))
    end_lsn: int | None = None
    manifest = path / "backup_manifest"
    if manifest.is_file():
        with suppress(ValueError, KeyError, IndexError):
            ranges = json.loads(manifest.read_text(encoding="utf-8"))["WAL-Ranges"]
            end_lsn = parse_lsn(ranges[-1]["End-LSN"])
    info_file = path.parent / f"{path.name}.{BACKUP_INFO}"
    if info_file.is_file():
        info = json.loads(info_file.read_text(encoding="utf-8"))
        end_time = datetime.fromisoformat(info["end_time"])
    elif manifest.is_file():  # the manifest is written last: its time is when the backup became usable
        end_time = datetime.fromtimestamp(manifest.stat().st_mtime, UTC)
    else:
        end_time = start_time
    return BaseBackup(
        path=path,
        start_time=start_time,
        end_time=end_time,
        start_lsn=start_lsn,
        end_lsn=end_lsn,
        timeline=int(wal_file[:8], 16),
        start_wal_file=wal_file,
    )


def with_archived_stop_time(backup: BaseBackup, wal_archive: str | os.PathLike[str]) -> BaseBackup:
    """Use the backup history file PostgreSQL archives (``<segment>.<offset>.backup``) for the end time.

    Its ``STOP TIME`` is authoritative but has whole seconds: one second is added, so a target in
    the backup's last second is never taken for a consistent point. A time recorded beside the
    backup by :func:`take_base_backup` wins.
    """
    if (backup.path.parent / f"{backup.name}.{BACKUP_INFO}").is_file():
        return backup
    for history in sorted(Path(wal_archive).glob(f"{backup.start_wal_file}.*.backup")):
        fields = dict(
            (key.strip(), value.strip())
            for key, _, value in (
                line.partition(":") for line in history.read_text(errors="replace").splitlines()
            )
        )
        if (
            fields.get("START WAL LOCATION", "").startswith(format_lsn(backup.start_lsn))
            and "STOP TIME" in fields
        ):
            stop = _label_time(fields["STOP TIME"]) + timedelta(seconds=1)
            return replace(backup, end_time=stop)
    return backup


def list_base_backups(folder: str | os.PathLike[str]) -> list[BaseBackup]:
    """The base backups in ``folder`` (one per sub-folder), oldest first."""
    root = Path(folder)
    if not root.is_dir():
        return []
    found = [read_base_backup(p) for p in sorted(root.iterdir()) if p.is_dir()]
    return sorted((b for b in found if b is not None), key=lambda b: b.start_lsn)
