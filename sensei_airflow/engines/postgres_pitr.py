"""Point-in-time recovery for self-managed PostgreSQL: base backups plus a WAL archive.

Two paths (docs/adr/0501-postgres-table-level-pitr.md):

- **table** (the default): recover a copy of the newest base backup taken before
  ``restore_to`` into a scratch cluster, replay the archived WAL up to the target, promote it,
  then replace only the tables in scope on the live target in one transaction (parents before
  children), leaving every other table and database untouched. The scratch cluster is always
  removed.
- **database**: for scope ``all`` when the manifest says the cluster holds only this
  migration's data: recover a new data directory beside the live one, then stop the live
  cluster, swap the directories and start it again with its own options. The old data
  directory is kept beside it.

Traps handled (ENVIRONMENT.md): the target time is always sent with an explicit offset, or
replaced by a restore point name; the current WAL segment is switched and its archiving
awaited before recovery; ``recovery_target_action=promote``; recovery is waited for until
``pg_is_in_recovery()`` is false; a target before the oldest base backup or after the newest
WAL is refused in assess, as is a gap in the archive; a segment missing during replay fails
before the live target changes.
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sensei_airflow.engines.base import (
    PointInTimeOutcome,
    PointInTimePlan,
    PointInTimeRecovery,
    PointInTimeRefused,
    RecoveryTarget,
    RecoveryWindow,
)
from sensei_airflow.engines.postgres import _OWNED_SEQUENCES
from sensei_airflow.local_postgres import LocalCluster, PostgresUnavailable, _as_postgres_user, find_bindir

if TYPE_CHECKING:
    from sensei_airflow.engines.postgres import PostgresEngine
    from sensei_airflow.manifest import PointInTimeSettings, PostgresPointInTime

log = logging.getLogger(__name__)

MECHANISM = "PostgreSQL WAL archive + base backups"
#: written beside each base backup taken by :func:`take_base_backup`.
BACKUP_INFO = "sensei-base-backup.json"
_SEGMENT = re.compile(r"^[0-9A-F]{24}$")
_COPY_CHUNK = 1 << 17
#: configuration the cluster-level path carries over from the live data directory.
LIVE_CONFIG_FILES = ("pg_hba.conf", "pg_ident.conf", "postgresql.conf", "postgresql.auto.conf")
_STOP_LINE = re.compile(r"recovery stopping .*|recovery has paused.*|consistent recovery state reached.*")


# -- base backups ------------------------------------------------------------------------
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


def _tar_member(path: Path, pattern: str) -> Path | None:
    found = sorted(path.glob(pattern))
    return found[0] if found else None


def _backup_label(path: Path) -> str | None:
    """The ``backup_label`` of a plain backup folder, or of a tar-format one (``base.tar[.gz]``)."""
    label_file = path / "backup_label"
    if label_file.is_file():
        return label_file.read_text(encoding="utf-8", errors="replace")
    base_tar = _tar_member(path, "base.tar*")
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


def take_base_backup(
    conninfo: dict[str, Any], folder: str | os.PathLike[str], name: str | None = None
) -> BaseBackup:
    """Take a plain-format base backup with ``pg_basebackup -Fp -X stream -c fast`` into ``folder/name``.

    The minimal step PITR needs (and its tests); a scheduled physical backup DAG may produce
    the same layout. Writes ``<name>.sensei-base-backup.json`` beside it with the end time.

    :param conninfo: ``host``, ``port``, ``user`` and optional ``password`` of the live cluster.
    """
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    name = name or datetime.now(UTC).strftime("base-%Y%m%dT%H%M%S%fZ")
    dest = root / name
    env = {**os.environ}
    if conninfo.get("password"):
        env["PGPASSWORD"] = str(conninfo["password"])
    args = [
        str(find_bindir() / "pg_basebackup"), "-D", str(dest), "-Fp", "-X", "stream", "-c", "fast",
        "-h", str(conninfo.get("host") or "127.0.0.1"), "-p", str(conninfo.get("port") or 5432),
        "-U", str(conninfo.get("user") or "postgres"), "--no-password",
    ]  # fmt: skip
    result = subprocess.run(args, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        shutil.rmtree(dest, ignore_errors=True)
        raise PostgresUnavailable(f"pg_basebackup failed: {result.stderr.strip()}")
    info = {"end_time": datetime.now(UTC).isoformat(), "tool": "pg_basebackup -Fp -X stream"}
    (root / f"{name}.{BACKUP_INFO}").write_text(json.dumps(info), encoding="utf-8")
    backup = read_base_backup(dest)
    assert backup is not None, f"pg_basebackup wrote no backup_label in {dest}"
    return backup


# -- the WAL archive ---------------------------------------------------------------------
def segment_number(name: str, segment_size: int) -> int:
    per_log = 0x100000000 // segment_size
    return int(name[8:16], 16) * per_log + int(name[16:24], 16)


def segment_name(timeline: int, number: int, segment_size: int) -> str:
    per_log = 0x100000000 // segment_size
    return f"{timeline:08X}{number // per_log:08X}{number % per_log:08X}"


def archived_segments(folder: str | os.PathLike[str]) -> list[str]:
    root = Path(folder)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if _SEGMENT.match(p.name))


def archive_gap(
    folder: str | os.PathLike[str], start_wal_file: str, segment_size: int, through: str | None = None
) -> str | None:
    """The first segment missing from ``start_wal_file`` to the newest archived one, or None.

    :param through: the last segment the server reports archived (``pg_stat_archiver``): the
        archive must hold it too, so a deleted newest segment is found as well.
    """
    names = archived_segments(folder)
    numbers = {segment_number(n, segment_size) for n in names}
    first = segment_number(start_wal_file, segment_size)
    newest = max(numbers, default=first)
    if through and _SEGMENT.match(through):
        newest = max(newest, segment_number(through, segment_size))
    for number in range(first, newest + 1):
        if number not in numbers:
            return segment_name(int(start_wal_file[:8], 16), number, segment_size)
    return None


# -- the scratch cluster -----------------------------------------------------------------
#: server settings of every scratch cluster: no TCP at all, a socket only its owner can reach.
PRIVATE_SOCKET_SETTINGS = {"listen_addresses": "", "unix_socket_permissions": "0700"}
#: the scratch cluster's authentication: local (socket) connections only; the socket's folder
#: (mode 0700, owned by the server's OS user) is what keeps everyone else out.
SCRATCH_HBA = "# sensei scratch cluster: no TCP; the socket folder is private (0700)\nlocal all all trust\n"


def _chown_to_postgres(path: Path) -> None:
    if os.geteuid() != 0:
        return
    owner = pwd.getpwnam("postgres")
    subprocess.run(["chown", "-R", f"{owner.pw_uid}:{owner.pw_gid}", str(path)], check=True)


def recovery_settings(
    target: RecoveryTarget, wal_archive: str, timeline: str, *, use_restore_point: bool
) -> dict[str, str]:
    """Server settings that recover to ``target`` and promote (never pause)."""
    settings = {
        "restore_command": f"cp {shlex.quote(str(Path(wal_archive).resolve()))}/%f %p",
        "recovery_target_action": "promote",
        "recovery_target_timeline": timeline,
        "archive_mode": "off",  # a scratch cluster must never write into the live archive
        "hot_standby": "on",
    }
    if use_restore_point and target.restore_point:
        settings["recovery_target_name"] = target.restore_point
    elif use_restore_point and target.position:
        settings["recovery_target_lsn"] = target.position
        settings["recovery_target_inclusive"] = "on" if target.inclusive else "off"
    else:
        # explicit UTC offset: a naive time would be read in the server's time zone
        settings["recovery_target_time"] = target.time.astimezone(UTC).isoformat(sep=" ")
        settings["recovery_target_inclusive"] = "on" if target.inclusive else "off"
    return settings


@dataclass
class RecoveredCluster:
    """A cluster recovered from a base backup to a target and promoted."""

    cluster: LocalCluster
    stopped_at: str

    def dsn(self, database: str, user: str) -> str:
        """Over the private socket (the scratch cluster has no TCP listener)."""
        return f"host={self.cluster.socket_dir} port={self.cluster.port} dbname={database} user={user}"


def _log_tail(cluster: LocalCluster, lines: int = 8) -> str:
    try:
        text = cluster.log_file.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text[-lines:])


def _stop_line(cluster: LocalCluster) -> str:
    try:
        text = cluster.log_file.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    found = [m.group(0) for m in _STOP_LINE.finditer(text) if m.group(0).startswith("recovery stopping")]
    return found[-1] if found else ""


def recover(
    backup: BaseBackup,
    target: RecoveryTarget,
    config: PostgresPointInTime,
    base_dir: Path,
    *,
    use_restore_point: bool,
    user: str,
    fast: bool = True,
) -> RecoveredCluster:
    """Copy ``backup`` into ``base_dir/data``, replay the archive to ``target``, promote, and wait.

    :raises PointInTimeRefused: when recovery cannot reach the target (a missing segment, a
        target before the backup became consistent); the server log's last lines say why.
    """
    if base_dir.exists():
        _remove_cluster(base_dir)
    base_dir.mkdir(parents=True)
    os.chmod(base_dir, 0o755)
    data = base_dir / "data"
    base_tar = _tar_member(backup.path, "base.tar*")
    if base_tar is None:
        subprocess.run(["cp", "-a", str(backup.path), str(data)], check=True)
    else:
        data.mkdir()
        subprocess.run(["tar", "-xf", str(base_tar), "-C", str(data)], check=True)
        wal_tar = _tar_member(backup.path, "pg_wal.tar*")
        if wal_tar is not None:
            subprocess.run(["tar", "-xf", str(wal_tar), "-C", str(data / "pg_wal")], check=True)
    for leftover in ("postmaster.pid", "postmaster.opts", "standby.signal"):
        (data / leftover).unlink(missing_ok=True)
    # No TCP listener and no host line: only the server's OS user (and root) reach its socket
    # folder, so two scratch clusters never compete for a port and nobody else can connect.
    (data / "pg_hba.conf").write_text(SCRATCH_HBA, encoding="utf-8")
    (data / "recovery.signal").touch()
    os.chmod(data, 0o700)
    _chown_to_postgres(base_dir)
    settings = recovery_settings(
        target, config.wal_archive, config.recovery_target_timeline, use_restore_point=use_restore_point
    )
    # the port only names the socket file inside the private folder
    cluster = LocalCluster(
        base_dir, config.scratch_ports[0], settings={**settings, **PRIVATE_SOCKET_SETTINGS}, fast=fast
    )
    cluster.socket_dir.mkdir(exist_ok=True)
    os.chmod(cluster.socket_dir, 0o700)
    _chown_to_postgres(cluster.socket_dir)
    try:
        cluster.start()
    except PostgresUnavailable as exc:
        raise PointInTimeRefused(
            f"recovery to {target.describe()} failed before the live target changed: {exc}; server log: "
            f"{_log_tail(cluster)}"
        ) from None
    deadline = time.monotonic() + config.recovery_timeout_seconds
    import psycopg

    while True:
        if not cluster.is_running():
            raise PointInTimeRefused(
                f"recovery to {target.describe()} failed before the live target changed; server log: "
                f"{_log_tail(cluster)}"
            )
        try:
            with psycopg.connect(
                RecoveredCluster(cluster, "").dsn("postgres", user), connect_timeout=5
            ) as conn:
                in_recovery = _scalar(conn, "SELECT pg_is_in_recovery()")
        except psycopg.OperationalError:
            in_recovery = True
        if not in_recovery:
            return RecoveredCluster(cluster, _stop_line(cluster))
        if time.monotonic() > deadline:
            raise PointInTimeRefused(
                f"recovery to {target.describe()} did not finish within "
                f"{config.recovery_timeout_seconds:g} s "
                "(rollback.point_in_time.postgres.recovery_timeout_seconds)"
            )
        time.sleep(0.1)


def _scalar(conn: Any, sql: str) -> Any:
    row = conn.execute(sql).fetchone()
    assert row is not None, sql
    return row[0]


def _remove_cluster(base_dir: Path) -> None:
    cluster = LocalCluster(base_dir, 0)
    with suppress(Exception):
        cluster.stop("immediate")
    shutil.rmtree(base_dir, ignore_errors=True)


# -- copying tables back -----------------------------------------------------------------
def relay_copy(src_cur: Any, dst_cur: Any, select_sql: str, copy_in_sql: str) -> int:
    """Stream a binary COPY from one connection into another, in ~128 KiB writes; rows copied."""
    with dst_cur.copy(copy_in_sql) as copy_in, src_cur.copy(select_sql) as copy_out:
        buffer = bytearray()
        for block in copy_out:
            buffer += block
            if len(buffer) >= _COPY_CHUNK:
                copy_in.write(bytes(buffer))
                buffer.clear()
        if buffer:
            copy_in.write(bytes(buffer))
    return int(dst_cur.rowcount)


_COLUMNS = (
    "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 "
    "AND NOT attisdropped ORDER BY attnum"
)


def replace_tables_from(
    engine: PostgresEngine, source: Any, ordered: Sequence[str], statements: Sequence[Any]
) -> tuple[list[str], dict[str, int]]:
    """Replace ``ordered`` (parents first) on the live target with their content in ``source``.

    One transaction on the live target: ``statements`` (lock, empty), then a binary COPY relay
    per table and its sequences set to the recovered values. Checked before anything changes:
    every table exists in ``source`` with the same columns.

    :param source: a psycopg connection to the recovered copy (scratch cluster, restored instance).
    :returns: the statements run and the rows copied per table.
    """
    run: list[str] = [s.sql for s in statements]
    rows: dict[str, int] = {}
    source.read_only = True
    with source.cursor() as src, engine.connect() as live, live.cursor() as check:
        for table in ordered:
            name = engine.quote_table(table)
            src.execute("SELECT to_regclass(%s) IS NOT NULL", (name,))
            if not src.fetchone()[0]:
                raise PointInTimeRefused(f"{table} did not exist at the recovery target; nothing was changed")
            src.execute(_COLUMNS, (name,))
            recovered = [r[0] for r in src.fetchall()]
            check.execute(_COLUMNS, (name,))
            current = [r[0] for r in check.fetchall()]
            if recovered != current:
                raise PointInTimeRefused(
                    f"{table} has columns {current} now but had {recovered} at the target: nothing was changed"
                )
        live.rollback()
        with live.transaction(), live.cursor() as dst:
            for statement in statements:
                dst.execute(statement.sql, statement.params or None)
            for table in ordered:
                name = engine.quote_table(table)
                dst.execute(_COLUMNS, (name,))
                quoted = ", ".join(engine.quote_identifier(r[0]) for r in dst.fetchall())
                copy_in = f"COPY {name} ({quoted}) FROM STDIN (FORMAT binary)"
                rows[table] = relay_copy(
                    src, dst, f"COPY {name} ({quoted}) TO STDOUT (FORMAT binary)", copy_in
                )
                run.append(copy_in)
                dst.execute(_OWNED_SEQUENCES, (name,))
                for (sequence,) in dst.fetchall():
                    src.execute(f"SELECT last_value, is_called FROM {sequence}")  # noqa: S608 - regclass text
                    last_value, is_called = src.fetchone()
                    dst.execute("SELECT setval(%s::regclass, %s, %s)", (sequence, last_value, is_called))
                    run.append(f"SELECT setval('{sequence}', {last_value}, {is_called})")
    source.rollback()
    return run, rows


# -- the mechanism -----------------------------------------------------------------------
class PostgresWalRecovery(PointInTimeRecovery):
    """Table-level (default) or cluster-level PITR of a self-managed PostgreSQL target."""

    mechanism = MECHANISM

    def __init__(self, engine: PostgresEngine, settings: PointInTimeSettings) -> None:
        assert settings.postgres is not None
        self.engine = engine
        self.settings = settings
        self.config: PostgresPointInTime = settings.postgres

    # -- facts about the live cluster and the archive --------------------------------------
    def server_facts(self) -> dict[str, Any]:
        rows = self.engine.query(
            "SELECT current_setting('wal_level'), current_setting('archive_mode'), pg_is_in_recovery(), "
            "now(), current_database(), current_user, "
            "(SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'), "
            "a.last_archived_wal, a.last_archived_time, a.last_failed_wal, a.last_failed_time "
            "FROM pg_stat_archiver a"
        )
        names = (
            *("wal_level", "archive_mode", "in_recovery", "now", "database", "user", "segment_size"),
            *("last_archived_wal", "last_archived_time", "last_failed_wal", "last_failed_time"),
        )
        return dict(zip(names, rows[0], strict=True))

    def backups(self) -> list[BaseBackup]:
        return [
            with_archived_stop_time(b, self.config.wal_archive)
            for b in list_base_backups(self.config.base_backups)
        ]

    def choose_backup(self, target: RecoveryTarget, restore_point_lsn: int | None) -> BaseBackup:
        backups = self.backups()
        if not backups:
            raise PointInTimeRefused(
                f"no base backup in {self.config.base_backups}: take one (pg_basebackup -Fp -X stream)"
            )
        if restore_point_lsn is not None:
            usable = [b for b in backups if (b.end_lsn or b.start_lsn) <= restore_point_lsn]
        else:
            usable = [b for b in backups if b.end_time <= target.time]
        if not usable:
            oldest = backups[0]
            raise PointInTimeRefused(
                f"restore_to {target.time.isoformat()} is before the oldest base backup ({oldest.name}, "
                f"usable from {oldest.end_time.isoformat()}): the WAL archive cannot reach it"
            )
        return usable[-1]

    def _check_archive(self, facts: dict[str, Any], backup: BaseBackup, target: RecoveryTarget) -> None:
        if facts["in_recovery"]:
            raise PointInTimeRefused(f"{self.engine.conn_id} is a standby: point it at the primary")
        if facts["wal_level"] not in ("replica", "logical") or facts["archive_mode"] not in ("on", "always"):
            raise PointInTimeRefused(
                f"{self.engine.conn_id} does not archive WAL (wal_level={facts['wal_level']}, "
                f"archive_mode={facts['archive_mode']}): point-in-time recovery is impossible"
            )
        failed, archived = facts["last_failed_time"], facts["last_archived_time"]
        if failed is not None and (archived is None or failed > archived):
            raise PointInTimeRefused(
                f"WAL archiving is failing on {self.engine.conn_id} (last failed segment "
                f"{facts['last_failed_wal']} at {failed.isoformat()}): fix archive_command first"
            )
        if target.time > facts["now"]:
            raise PointInTimeRefused(
                f"restore_to {target.time.isoformat()} is after the newest WAL (the server's clock says "
                f"{facts['now'].isoformat()}): a point in the future cannot be restored"
            )
        if not Path(self.config.wal_archive).is_dir():
            raise PointInTimeRefused(
                f"the WAL archive {self.config.wal_archive} is not readable from this worker"
            )
        gap = archive_gap(
            self.config.wal_archive,
            backup.start_wal_file,
            int(facts["segment_size"]),
            facts["last_archived_wal"],
        )
        if gap is not None:
            raise PointInTimeRefused(
                f"WAL segment {gap} is missing from the archive {self.config.wal_archive}: replay from base "
                f"backup {backup.name} cannot pass it"
            )

    def _restore_point_lsn(self, target: RecoveryTarget) -> int | None:
        return parse_lsn(target.position) if target.position else None

    # -- PointInTimeRecovery ------------------------------------------------------------------
    def create_restore_point(self, name: str) -> str:
        """``pg_create_restore_point(name)``; returns its LSN (the migration tool calls this)."""
        with self.engine.connect() as conn:
            conn.autocommit = True
            lsn = conn.execute("SELECT pg_create_restore_point(%s)::text", (name,)).fetchone()[0]
        return str(lsn)

    def assess(
        self, tables: Sequence[str], target: RecoveryTarget, *, whole_database: bool
    ) -> PointInTimePlan:
        facts = self.server_facts()
        backup = self.choose_backup(target, self._restore_point_lsn(target))
        self._check_archive(facts, backup, target)
        existing = set(self.engine.user_tables())
        missing = [t for t in tables if t not in existing]
        if missing:
            raise PointInTimeRefused(f"target table {missing[0]} does not exist on {self.engine.conn_id}")
        tablespaces = backup.path / "pg_tblspc"
        if tablespaces.is_dir() and any(tablespaces.iterdir()):
            raise PointInTimeRefused(
                f"base backup {backup.name} has tablespaces: the scratch restore does not relocate them"
            )
        foreign_keys = self.engine.foreign_keys()
        outside = [fk for fk in foreign_keys if fk.parent in tables and fk.child not in tables]
        counts = self.engine.row_counts({fk.child for fk in outside})
        for fk in outside:
            if counts[fk.child] > 0:
                raise PointInTimeRefused(
                    f"{fk.child} (outside the scope) references {fk.parent} through {fk.name} and holds "
                    f"{counts[fk.child]} rows: replacing {fk.parent} alone could break it; "
                    "add it to the scope"
                )
        from sensei_airflow.plan import dependency_order

        ordered = dependency_order(list(tables), foreign_keys)
        warnings: list[str] = []
        path = "table"
        if whole_database:
            reason = self._cluster_path_refusal()
            if reason is None:
                path = "database"
            else:
                warnings.append(f"restoring table by table, not the whole cluster: {reason}")
        use_point = bool(target.restore_point or target.position)
        settings = recovery_settings(
            target, self.config.wal_archive, self.config.recovery_target_timeline, use_restore_point=use_point
        )
        stop = next(
            f"{name} = '{settings[name]}'"
            for name in ("recovery_target_name", "recovery_target_lsn", "recovery_target_time")
            if name in settings
        )
        steps = [
            "SELECT pg_switch_wal()  -- then wait until the segment is in the archive",
            f"copy base backup {backup.name} to a new data directory",
            f"{stop}, recovery_target_action = 'promote', restore_command from {self.config.wal_archive}",
            "start it and wait until pg_is_in_recovery() is false",
        ]
        if path == "table":
            referenced = {fk.parent for fk in outside}
            steps += [s.sql for s in self.replace_statements(ordered, referenced)]
            steps.append("COPY each table from the recovered cluster, parents first; set its sequences")
            steps.append("COMMIT; stop and remove the scratch cluster")
        else:
            steps += [
                f"pg_ctl stop -D {self.config.data_directory}",
                f"move {self.config.data_directory} aside, move the recovered directory into its place",
                f"pg_ctl start -D {self.config.data_directory} with its previous options",
            ]
        return PointInTimePlan(
            tables=ordered,
            path=path,
            steps=steps,
            warnings=warnings,
            detail={
                "mechanism": MECHANISM,
                "base_backup": backup.name,
                "base_backup_usable_from": backup.end_time.isoformat(),
                "database": facts["database"],
                "referenced_from_outside": sorted({fk.parent for fk in outside}),
                "use_restore_point": use_point,
            },
        )

    def _cluster_path_refusal(self) -> str | None:
        if not self.config.data_directory:
            return "rollback.point_in_time.postgres.data_directory is not set"
        data = Path(self.config.data_directory)
        if not (data / "PG_VERSION").is_file():
            return f"{data} is not a data directory this worker can reach"
        rows = self.engine.query("SELECT system_identifier::text FROM pg_control_system()")
        control = subprocess.run(
            [str(self._bindir() / "pg_controldata"), str(data)], capture_output=True, text=True, check=False
        )
        if f"Database system identifier:           {rows[0][0]}" not in control.stdout:
            return f"{data} is not the data directory of {self.engine.conn_id}"
        return None

    def _bindir(self) -> Path:
        return Path(self.config.bin_dir) if self.config.bin_dir else find_bindir()

    def replace_statements(self, ordered: Sequence[str], referenced_from_outside: set[str]) -> list[Any]:
        """Lock and empty the tables in scope (the engine's own truncate rules), children first."""
        children_first = list(reversed(ordered))
        return [
            *self.engine.lock_sql(children_first),
            *self.engine.empty_tables_sql(children_first, referenced_from_outside),
        ]

    def switch_and_wait(self) -> str:
        """Close the current WAL segment and wait until it is archived; returns its name."""
        with self.engine.connect() as conn:
            conn.autocommit = True
            segment = conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()[0]
            deadline = time.monotonic() + self.config.archive_wait_seconds
            while not (Path(self.config.wal_archive) / segment).exists():
                row = conn.execute(
                    "SELECT last_archived_wal, last_failed_wal, last_failed_time FROM pg_stat_archiver"
                ).fetchone()
                if row[0] is not None and row[0] >= segment and row[0][:8] == segment[:8]:
                    break
                if time.monotonic() > deadline:
                    raise PointInTimeRefused(
                        f"WAL segment {segment} was not archived within "
                        f"{self.config.archive_wait_seconds:g} s (last failed: {row[1]} at {row[2]}): "
                        "the live target is unchanged"
                    )
                time.sleep(0.05)
        return str(segment)

    def _scratch_base(self, rollback_key: str) -> Path:
        from sensei_airflow.local_postgres import new_cluster_dir

        if self.config.scratch_dir:
            root = Path(self.config.scratch_dir)
            root.mkdir(parents=True, exist_ok=True)
            return root / f"sensei-pitr-{rollback_key}"
        return new_cluster_dir("sensei-pitr-") / "scratch"

    @contextmanager
    def scratch(
        self, backup: BaseBackup, target: RecoveryTarget, *, use_restore_point: bool, key: str
    ) -> Iterator[RecoveredCluster]:
        """A recovered, promoted scratch cluster; always stopped and removed on exit."""
        base = self._scratch_base(key)
        try:
            yield recover(
                backup,
                target,
                self.config,
                base,
                use_restore_point=use_restore_point,
                user=self.config.scratch_user,
            )
        finally:
            _remove_cluster(base)
            if not self.config.scratch_dir:
                shutil.rmtree(base.parent, ignore_errors=True)

    def restore(self, plan: PointInTimePlan, target: RecoveryTarget) -> PointInTimeOutcome:
        backup = next((b for b in self.backups() if b.name == plan.detail["base_backup"]), None)
        if backup is None:
            raise PointInTimeRefused(
                f"base backup {plan.detail['base_backup']} is gone from {self.config.base_backups}"
            )
        facts = self.server_facts()
        self._check_archive(facts, backup, target)
        switched = self.switch_and_wait()
        use_point = bool(plan.detail.get("use_restore_point"))
        key = f"{int(time.time() * 1000)}-{os.getpid()}"
        if plan.path == "database":
            return self._restore_cluster(plan, target, backup, switched, use_point, key)
        with self.scratch(backup, target, use_restore_point=use_point, key=key) as recovered:
            statements, rows = self.copy_back(
                recovered, plan, set(plan.detail.get("referenced_from_outside", []))
            )
        return PointInTimeOutcome(
            statements=statements,
            rows_restored=rows,
            detail={
                "path": "table",
                "base_backup": backup.name,
                "switched_wal": switched,
                "recovery": recovered.stopped_at,
            },
        )

    def copy_back(
        self, recovered: RecoveredCluster, plan: PointInTimePlan, referenced: set[str]
    ) -> tuple[list[str], dict[str, int]]:
        """Replace the plan's tables on the live target with their recovered content, in one transaction."""
        import psycopg

        dsn = recovered.dsn(plan.detail["database"], self.config.scratch_user)
        with closing(psycopg.connect(dsn)) as source:
            return replace_tables_from(
                self.engine, source, plan.tables, self.replace_statements(plan.tables, referenced)
            )

    # -- the cluster-level path ------------------------------------------------------------
    def _restore_cluster(
        self,
        plan: PointInTimePlan,
        target: RecoveryTarget,
        backup: BaseBackup,
        switched: str,
        use_point: bool,
        key: str,
    ) -> PointInTimeOutcome:
        assert self.config.data_directory
        live_dir = Path(self.config.data_directory)
        base = live_dir.parent / f"{live_dir.name}.sensei-restore"
        aside = live_dir.parent / f"{live_dir.name}.before-pitr-{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
        options = _postmaster_options(live_dir)
        import psycopg

        try:
            recovered = recover(
                backup,
                target,
                self.config,
                base,
                use_restore_point=use_point,
                user=self.config.scratch_user,
                fast=False,
            )
            with closing(
                psycopg.connect(recovered.dsn(plan.detail["database"], self.config.scratch_user))
            ) as conn:
                quoted = [self.engine.quote_table(t) for t in plan.tables]
                rows = {
                    t: int(_scalar(conn, f"SELECT count(*) FROM {q}"))  # noqa: S608
                    for t, q in zip(plan.tables, quoted, strict=True)
                }
            recovered.cluster.stop("fast")
            # the live cluster's own configuration (the scratch one trusted its private socket)
            for name in LIVE_CONFIG_FILES:
                if (live_dir / name).is_file():
                    shutil.copy2(live_dir / name, base / "data" / name)
            _chown_to_postgres(base / "data")
        except BaseException:
            _remove_cluster(base)
            raise
        pg_ctl = str(self._bindir() / "pg_ctl")
        run = [*_as_postgres_user(), pg_ctl, "-D", str(live_dir), "-m", "fast", "-w", "stop"]
        subprocess.run(run, capture_output=True, text=True, check=True)
        live_dir.rename(aside)
        (base / "data").rename(live_dir)
        shutil.rmtree(base, ignore_errors=True)
        log_file = live_dir.parent / "server.log"
        start = [
            *_as_postgres_user(),
            pg_ctl,
            "-D",
            str(live_dir),
            "-l",
            str(log_file),
            "-w",
            "-t",
            "120",
            "-o",
            options,
            "start",
        ]
        started = subprocess.run(start, capture_output=True, text=True, check=False)
        if started.returncode != 0:
            # put the previous cluster back rather than leave the target down
            shutil.rmtree(live_dir.parent / f"{live_dir.name}.failed-pitr", ignore_errors=True)
            live_dir.rename(live_dir.parent / f"{live_dir.name}.failed-pitr")
            aside.rename(live_dir)
            subprocess.run([*start], capture_output=True, text=True, check=False)
            raise RuntimeError(
                f"the recovered cluster did not start ({started.stderr.strip()}); the previous one is back"
            )
        return PointInTimeOutcome(
            statements=[
                " ".join(run),
                f"mv {live_dir} {aside}",
                f"mv <recovered> {live_dir}",
                " ".join(start),
            ],
            rows_restored=rows,
            detail={
                "path": "database",
                "base_backup": backup.name,
                "switched_wal": switched,
                "recovery": recovered.stopped_at,
                "previous_data_directory": str(aside),
            },
        )

    # -- windows ----------------------------------------------------------------------------
    def windows(self, tables: Sequence[str], point: datetime) -> list[RecoveryWindow]:
        backups = self.backups()
        earliest = backups[0].end_time if backups else None
        covering = [b for b in backups if b.end_time <= point]
        closes: list[tuple[datetime, str]] = []
        if not covering:
            closes.append((point, "no base backup was taken before this point"))
        else:
            chosen = covering[-1]
            if self.config.base_backup_retention_days is not None:
                closes.append(
                    (chosen.end_time + timedelta(days=self.config.base_backup_retention_days),
                     f"base backup retention ({chosen.name})")
                )  # fmt: skip
            if self.config.wal_retention_days is not None:
                closes.append(
                    (
                        chosen.start_time + timedelta(days=self.config.wal_retention_days),
                        "WAL archive retention",
                    )
                )
        closes_at, limit = min(closes) if closes else (None, "no retention configured")
        return [
            RecoveryWindow(
                mechanism=MECHANISM,
                table=None,
                earliest=earliest,
                latest=datetime.now(UTC),
                closes_at=closes_at,
                limit=limit,
            )
        ]


def _postmaster_options(data_dir: Path) -> str:
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
