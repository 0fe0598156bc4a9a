"""The migration manifest: what a forward migration copied, and everything a rollback needs to know.

One YAML file per migration, in the folder named by ``SENSEI_MIGRATIONS_DIR`` (default:
``migrations/`` inside the Airflow dags folder). Files are validated into frozen pydantic
models; a bad file is reported with its path, the key and the problem, and never hides the
other files.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from sensei_airflow import names as naming
from sensei_airflow.transforms import BuiltinTransform

MIGRATION_ID_PATTERN = r"^[a-z0-9_]+$"


class Strategy(StrEnum):
    """The five rollback strategies of the product."""

    TRUNCATE = "truncate"
    REVERSE_MIGRATION = "reverse_migration"
    POINT_IN_TIME = "point_in_time"
    BACKUP_RESTORE = "backup_restore"
    UNDO_LOG = "undo_log"


def check_identifier(name: str) -> str:
    """Accept a one-part name (column, key, role) as names.py writes it; return its canonical form.

    ``Display Name`` and ``"Display Name"`` are both ``Display Name``; ``"a.b"`` keeps its quotes.
    """
    return naming.canonical_part(name)


def check_table_name(name: str) -> str:
    """Accept ``table`` or ``schema.table`` as names.py writes it; return its canonical form."""
    return naming.canonical_table(name)


Identifier = Annotated[str, AfterValidator(check_identifier)]
TableName = Annotated[str, AfterValidator(check_table_name)]


def _check_expression(text: str) -> str:
    from sensei_airflow.expressions import check_expression  # sqlglot, only for manifests that use SQL

    return check_expression(text)


#: a ``forward``/``inverse`` SQL expression: exactly one, parsed (sensei_airflow.expressions).
ColumnExpression = Annotated[str, AfterValidator(_check_expression)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ConnectionRef(_Frozen):
    conn_id: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$")]


class ColumnMapping(_Frozen):
    """How one source column became one target column.

    With neither ``forward`` nor ``inverse`` the column was copied (perhaps renamed). ``forward``
    is the SQL expression (over source columns) the migration applied; ``inverse`` the
    expression (over target columns) that gives the source value back. A ``forward`` without
    ``inverse`` is not reversible. Each is parsed when the manifest loads: exactly one expression,
    no statement separator, no subquery, no function acting outside the row.
    """

    source: Identifier
    target: Identifier
    forward: ColumnExpression | None = None
    inverse: ColumnExpression | None = None
    #: a built-in transform that knows its inverse (see :mod:`sensei_airflow.transforms`).
    transform: BuiltinTransform | None = None

    @model_validator(mode="after")
    def _transform_alone(self) -> ColumnMapping:
        if self.transform is None:
            return self
        if self.forward is not None or self.inverse is not None:
            raise ValueError("transform: give either a built-in transform or forward/inverse SQL, not both")
        if self.transform.split is not None and self.transform.split.into[0] != self.target:
            raise ValueError("transform: split.into must start with the mapping's target column")
        if self.transform.join is not None and self.transform.join.columns[0] != self.source:
            raise ValueError("transform: join.columns must start with the mapping's source column")
        return self

    @property
    def reversible(self) -> bool:
        if self.transform is not None:
            return self.transform.reversible
        return self.forward is None or self.inverse is not None


class TableMapping(_Frozen):
    source: TableName
    target: TableName
    key: Annotated[list[Identifier], Field(min_length=1)]
    columns: list[ColumnMapping] | None = None

    @model_validator(mode="after")
    def _columns_are_unique(self) -> TableMapping:
        if self.columns:
            for side in ("source", "target"):
                names = [getattr(c, side) for c in self.columns]
                duplicates = sorted({n for n in names if names.count(n) > 1})
                if duplicates:
                    raise ValueError(f"columns: {side} column {duplicates[0]!r} is mapped twice")
            targets = {c.target for c in self.columns}
            missing = [k for k in self.key if k not in targets]
            if missing:
                alike = [t for t in targets if naming.texts(t, 1) == naming.texts(missing[0], 1)]
                hint = f" (a column is written {alike[0]}: spell the key the same way)" if alike else ""
                raise ValueError(f"key column {missing[0]!r} is not among the mapped target columns{hint}")
        return self

    @property
    def target_name(self) -> str:
        """The unqualified target table name (``orders`` for ``sales.orders``), in canonical form."""
        return naming.last_part(self.target)


class Phase(_Frozen):
    phase: Annotated[int, Field(ge=1)]
    tables: Annotated[list[TableMapping], Field(min_length=1)]


class PreMigrationBackup(_Frozen):
    enabled: bool = False
    type: Literal["logical", "physical"] = "logical"
    storage: str | None = None
    retention_days: Annotated[int, Field(ge=1)] = 30
    schedule: str | None = None


_Port = Annotated[int, Field(ge=1024, le=65535)]


class PostgresPointInTime(_Frozen):
    """Self-managed PostgreSQL: where the base backups and archived WAL are, and how to reach the cluster.

    ``base_backups`` holds one plain-format base backup (``pg_basebackup -Fp -X stream``) per
    sub-folder; ``wal_archive`` is the folder ``archive_command`` copies WAL segments into. Both
    are read on the machine that runs the rollback tasks. ``data_directory`` (and the server
    binaries) are needed only by the cluster-level path.
    """

    wal_archive: Annotated[str, Field(min_length=1)]
    base_backups: Annotated[str, Field(min_length=1)]
    data_directory: str | None = None
    bin_dir: str | None = None
    #: folder for scratch clusters (each in its own sub-folder, always removed).
    scratch_dir: str | None = None
    scratch_ports: tuple[_Port, _Port] = (55400, 55499)
    #: database role used on the scratch cluster (it trusts local connections only).
    scratch_user: Annotated[str, Field(min_length=1)] = "postgres"
    base_backup_retention_days: Annotated[float, Field(gt=0)] | None = None
    wal_retention_days: Annotated[float, Field(gt=0)] | None = None
    recovery_target_timeline: str = "latest"
    archive_wait_seconds: Annotated[float, Field(gt=0)] = 60
    recovery_timeout_seconds: Annotated[float, Field(gt=0)] = 3600

    @model_validator(mode="after")
    def _port_range(self) -> PostgresPointInTime:
        if self.scratch_ports[0] > self.scratch_ports[1]:
            raise ValueError("scratch_ports: give [lowest, highest]")
        return self


class RdsPointInTime(_Frozen):
    """AWS RDS / Aurora: which instance (or Aurora cluster) holds the target, and how to restore it."""

    aws_conn_id: Annotated[str, Field(min_length=1)] = "aws_default"
    region_name: str | None = None
    db_instance_identifier: Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9\-]{0,62}$")] | None = None
    db_cluster_identifier: Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9\-]{0,62}$")] | None = None
    #: instance class of the restored instance (default: the source's).
    instance_class: str | None = None
    #: ``copy_back``: copy the tables in scope from the restored instance; ``swap``: rename the
    #: restored instance into the live one's place (scope ``all`` of a dedicated instance only).
    method: Literal["copy_back", "swap"] = "copy_back"
    keep_restored_instance: bool = False
    wait_timeout_minutes: Annotated[float, Field(gt=0)] = 90
    poll_seconds: Annotated[float, Field(gt=0)] = 30

    @model_validator(mode="after")
    def _one_source(self) -> RdsPointInTime:
        if (self.db_instance_identifier is None) == (self.db_cluster_identifier is None):
            raise ValueError("give exactly one of db_instance_identifier and db_cluster_identifier")
        return self


class PointInTimeSettings(_Frozen):
    """The manifest's ``rollback.point_in_time`` block: engine-specific settings of the strategy.

    Each engine reads its own sub-block (``postgres``, ``rds``, ...); an engine with nothing to
    configure needs none. The shared keys say what the whole target may be restored for.
    """

    #: the target database (cluster, instance) holds only this migration's data, so a rollback
    #: of scope ``all`` may restore it whole instead of table by table.
    target_holds_only_this_migration: bool = False
    #: prefer the restore point the migration tool recorded when restore_to is the migration's start.
    prefer_restore_point: bool = True
    #: name prefix of that restore point (default ``sensei_<migration id>``; a UTC time is appended).
    restore_point: Annotated[str, Field(pattern=r"^[A-Za-z0-9_\-]{1,63}$")] | None = None
    #: the scheduled window check warns this long before a rollback window closes.
    warn_before_hours: Annotated[float, Field(gt=0)] = 24
    postgres: PostgresPointInTime | None = None
    rds: RdsPointInTime | None = None


class UndoLogSettings(_Frozen):
    """``rollback.undo_log``: capture every change to the target tables from the start mark on.

    PostgreSQL needs ``wal_level=logical`` on the target (a server restart) and a free replication
    slot; the mark refuses otherwise.
    """

    enabled: bool = False


class Approver(_Frozen):
    """A user who may answer the approval (Airflow's human-in-the-loop ``assigned_users``).

    Written as a plain user name when the auth manager's user id is that name (the simple auth
    manager), or as ``{id, name}`` when it is not.
    """

    id: Annotated[str, Field(min_length=1)]
    name: Annotated[str, Field(min_length=1)]

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value: object) -> object:
        return {"id": value, "name": value} if isinstance(value, str) else value


class RollbackPlanning(_Frozen):
    backup_before_start: bool = False
    backup_type: Literal["logical", "physical"] = "logical"
    backup_location: str | None = None
    rollback_window_hours: Annotated[float, Field(gt=0)] | None = 168
    preferred_strategy: Strategy = Strategy.TRUNCATE
    fallback_strategy: Strategy | None = None
    verify_rollback: bool = True
    pre_migration_backup: PreMigrationBackup = PreMigrationBackup()
    point_in_time: PointInTimeSettings = PointInTimeSettings()
    undo_log: UndoLogSettings = UndoLogSettings()
    #: a human approves or rejects each (non dry-run) rollback's plan in the Airflow UI before it runs.
    require_approval: bool = False
    #: how long the approval waits for an answer; unanswered, the rollback is not done.
    approval_timeout_hours: Annotated[float, Field(gt=0)] = 24
    #: who may approve (default: anyone allowed to answer in Airflow).
    approvers: list[Approver] = Field(default_factory=list)


class Downstream(_Frozen):
    dags: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.\-]+$")]] = Field(default_factory=list)
    db_roles: list[Identifier] = Field(default_factory=list)


class NotifyChannel(_Frozen):
    conn_id: Annotated[str, Field(min_length=1)]
    to: list[str] = Field(default_factory=list)


class Manifest(_Frozen):
    """One migration, as described by its YAML manifest."""

    id: Annotated[str, Field(pattern=MIGRATION_ID_PATTERN, max_length=100)]
    description: str = ""
    source: ConnectionRef
    target: ConnectionRef
    state: ConnectionRef = ConnectionRef(conn_id="sensei_state")
    #: when the forward migration began; optional once the migration has a start mark (mark.py),
    #: which then takes its place.
    started_at: AwareDatetime | None = None
    phases: Annotated[list[Phase], Field(min_length=1)]
    rollback: RollbackPlanning = RollbackPlanning()
    downstream: Downstream = Downstream()
    notify: list[NotifyChannel] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        numbers = [p.phase for p in self.phases]
        if len(set(numbers)) != len(numbers):
            raise ValueError(f"phases: phase numbers must be unique, got {numbers}")
        for side in ("source", "target"):
            names = [getattr(t, side) for t in self.tables]
            duplicates = sorted({n for n in names if names.count(n) > 1})
            if duplicates:
                raise ValueError(f"phases: {side} table {duplicates[0]!r} appears twice")
        if self.state.conn_id == self.target.conn_id:
            raise ValueError(
                "state: the audit trail cannot live on the target connection it rolls back; "
                "name another connection"
            )
        if self.rollback.fallback_strategy == self.rollback.preferred_strategy:
            raise ValueError("rollback.fallback_strategy: must differ from preferred_strategy")
        return self

    @property
    def tables(self) -> list[TableMapping]:
        """Every migrated table, in phase order then manifest order."""
        return [t for p in sorted(self.phases, key=lambda p: p.phase) for t in p.tables]

    def phase_of(self, table: TableMapping) -> int:
        return next(p.phase for p in self.phases if table in p.tables)

    def phase(self, number: int) -> Phase | None:
        return next((p for p in self.phases if p.phase == number), None)

    def window_closes_at(self, start: datetime | None = None) -> datetime | None:
        """When the rollback window closes: ``rollback_window_hours`` after the migration's start.

        :param start: the migration's start (its mark's moment, :func:`sensei_airflow.start.migration_start`);
            default the manifest's ``started_at``. None when neither is known or the window is unbounded.
        """
        hours = self.rollback.rollback_window_hours
        begun = start or self.started_at
        return None if hours is None or begun is None else begun + timedelta(hours=hours)

    def resolve_table(self, name: str) -> TableMapping:
        """Find a migrated table by its target name, qualified or (when unambiguous) not.

        Any written form works: ``sales.orders``, ``orders``, ``"Sales Data"."Order Items"``,
        ``Order Items``. A name matches as written (quotes that change nothing on any engine
        ignored); failing that, ignoring how its parts are quoted, when only one table matches.

        :raises LookupError: with a message naming the table and what is known.
        """
        try:
            parts = naming.parse_name(name)
        except ValueError as exc:
            raise LookupError(f"table {name!r} is not a table name: {exc}") from None
        written = naming.canonical_table(name)
        known = ", ".join(t.target for t in self.tables)
        texts = tuple(p.text for p in parts)

        def matches(exact: bool) -> list[TableMapping]:
            if len(parts) == 2:
                if exact:
                    return [t for t in self.tables if t.target == written]
                return [t for t in self.tables if naming.texts(t.target) == texts]
            if exact:
                return [t for t in self.tables if t.target_name == written]
            return [t for t in self.tables if naming.texts(t.target)[-1:] == texts]

        for exact in (True, False):
            found = matches(exact)
            if len(found) == 1:
                return found[0]
            if len(found) > 1:
                choices = ", ".join(t.target for t in found)
                raise LookupError(f"table {name!r} is ambiguous in migration {self.id}: use one of {choices}")
        raise LookupError(f"table {name!r} is not part of migration {self.id} (its tables: {known})")


@dataclass(frozen=True)
class ManifestError:
    """A manifest that could not be loaded: which file, which key, what is wrong."""

    path: str
    key: str
    problem: str

    def __str__(self) -> str:
        where = f"{self.path}: {self.key}" if self.key else self.path
        return f"{where}: {self.problem}"


@dataclass(frozen=True)
class ManifestSet:
    """All manifests of a folder: the good ones by id, and the errors of the bad ones."""

    directory: str
    manifests: dict[str, Manifest] = field(default_factory=dict)
    errors: list[ManifestError] = field(default_factory=list)

    def __iter__(self) -> Iterator[Manifest]:
        return iter(self.manifests.values())

    def get(self, migration_id: str) -> Manifest:
        """Return the manifest or raise ``LookupError`` saying why it is not there."""
        if migration_id in self.manifests:
            return self.manifests[migration_id]
        for error in self.errors:
            if error.path.endswith((f"{migration_id}.yaml", f"{migration_id}.yml")):
                raise LookupError(f"migration {migration_id!r} has a bad manifest: {error}")
        known = ", ".join(sorted(self.manifests)) or "none"
        raise LookupError(
            f"unknown migration {migration_id!r}: no manifest with that id in {self.directory} "
            f"(known: {known})"
        )


def migrations_dir() -> Path:
    """The manifest folder: ``SENSEI_MIGRATIONS_DIR``, else ``[sensei] migrations_dir``, else dags/migrations."""
    configured = os.environ.get("SENSEI_MIGRATIONS_DIR")
    if not configured:
        from airflow.sdk import conf

        configured = conf.get("sensei", "migrations_dir", fallback="") or os.path.join(
            conf.get("core", "dags_folder"), "migrations"
        )
    return Path(configured).expanduser()


def _error_key(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc)


def parse_manifest(text: str, path: str) -> Manifest:
    """Parse one manifest's YAML text.

    :raises ManifestInvalid: carrying one ``ManifestError`` per problem.
    """
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else ""
        raise ManifestInvalid([ManifestError(path, where, f"not valid YAML: {exc}")]) from exc
    if not isinstance(data, dict):
        raise ManifestInvalid([ManifestError(path, "", "a manifest must be a YAML mapping")])
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        errors = [
            ManifestError(path, _error_key(e["loc"]), e["msg"].removeprefix("Value error, "))
            for e in exc.errors()
        ]
        raise ManifestInvalid(errors) from exc


class ManifestInvalid(ValueError):
    def __init__(self, errors: list[ManifestError]) -> None:
        self.errors = errors
        super().__init__("; ".join(str(e) for e in errors))


def load_manifests(directory: str | os.PathLike[str] | None = None) -> ManifestSet:
    """Load every ``*.yaml``/``*.yml`` of the folder. Never raises for a bad file."""
    folder = Path(directory) if directory is not None else migrations_dir()
    result = ManifestSet(directory=str(folder))
    if not folder.is_dir():
        return result
    files = sorted(p for p in folder.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
    seen: dict[str, str] = {}
    for path in files:
        try:
            manifest = parse_manifest(path.read_text(encoding="utf-8"), str(path))
        except ManifestInvalid as exc:
            result.errors.extend(exc.errors)
            continue
        except OSError as exc:
            result.errors.append(ManifestError(str(path), "", f"cannot be read: {exc}"))
            continue
        if manifest.id in seen:
            result.errors.append(
                ManifestError(str(path), "id", f"{manifest.id!r} is already used by {seen[manifest.id]}")
            )
            continue
        seen[manifest.id] = str(path)
        result.manifests[manifest.id] = manifest
    return result
