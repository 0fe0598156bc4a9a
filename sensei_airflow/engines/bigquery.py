"""BigQuery, through the google provider's ``BigQueryHook`` (its ``google.cloud.bigquery`` client).

Names are ``dataset.table`` (or ``project.dataset.table``) in the connection's project, case as
written; a part is quoted with backticks in SQL (a table name may hold spaces and letters of any
script). BigQuery's primary and foreign keys are informational (never enforced), so nothing
orders or blocks emptying a table: :meth:`BigQueryEngine.foreign_keys` is empty and tables are
emptied with ``TRUNCATE TABLE`` in one multi-statement transaction. There are no sequences.

Point-in-time recovery is Time Travel (``FOR SYSTEM_TIME AS OF``) within the dataset's window
(``max_time_travel_hours``, 48 to 168 hours); see docs/adr/0601-bigquery-time-travel.md.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sensei_airflow.engines.base import (
    Engine,
    ForeignKey,
    PointInTimeOutcome,
    PointInTimePlan,
    PointInTimeRecovery,
    PointInTimeRefused,
    RecoveryTarget,
    RecoveryWindow,
    SequenceReset,
    Statement,
    check_outside_empty,
)
from sensei_airflow.extras import missing_extra

#: BigQuery's default time-travel window when the dataset does not set one.
DEFAULT_TIME_TRAVEL_HOURS = 168
#: a point closer than this to the end of the window is refused: it could expire mid-rollback.
WINDOW_MARGIN = timedelta(minutes=30)


class BigQueryEngine(Engine):
    dialect = "bigquery"
    engine_title = "BigQuery"
    default_schema = ""
    max_name_parts = 3
    max_identifier_chars = 1024
    forbidden_name_chars = {"\0": "NUL", "`": "backtick"}

    def _make_hook(self) -> Any:
        try:
            from airflow.providers.google.cloud.hooks.bigquery import BigQueryHook
        except ImportError:
            raise missing_extra("google", "Google") from None
        return BigQueryHook(gcp_conn_id=self.conn_id, use_legacy_sql=False)

    @property
    def client(self) -> Any:
        """The ``google.cloud.bigquery.Client`` of the hook (built once per engine)."""
        if "_client" not in self.__dict__:
            self.__dict__["_client"] = self.hook.get_client(project_id=self.hook.project_id)
        return self.__dict__["_client"]

    # -- names ---------------------------------------------------------------------------
    # qualify: names are exact as written, ``dataset.table`` or ``project.dataset.table`` (no
    # default dataset: default_schema is empty).

    def dotted(self, table: str) -> str:
        """``dataset.table`` as the BigQuery client library takes a table id (exact parts, dots between)."""
        return ".".join(self.name_parts(table))

    def query(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        """Rows of one GoogleSQL query (or script), with named ``@parameters``."""
        from google.cloud import bigquery

        config = bigquery.QueryJobConfig(
            use_legacy_sql=False,
            query_parameters=[_parameter(name, value) for name, value in (params or {}).items()],
        )
        result = self.client.query(sql, job_config=config).result()
        return [tuple(row.values()) for row in result] if result is not None else []

    def run_statements(self, statements: Sequence[Statement]) -> None:
        """Run statements one after another (each its own job); named parameters from ``params``."""
        for statement in statements:
            self.query(statement.sql, dict(statement.params) if statement.params else None)

    # -- catalog ---------------------------------------------------------------------------
    def mark_moment(self, name: str) -> Any:
        """The server's time: ``FOR SYSTEM_TIME AS OF`` reaches the mark."""
        from sensei_airflow.engines.base import MarkMoment

        (at,) = self.query("SELECT CURRENT_TIMESTAMP()")[0]
        return MarkMoment(at=_utc(at))

    def identity(self) -> str:
        return f"bigquery:{self.client.project}"

    def user_tables(self) -> list[str]:
        names = []
        for dataset in self.client.list_datasets():
            for table in self.client.list_tables(dataset.dataset_id):
                if table.table_type == "TABLE":
                    names.append(self.table_name(dataset.dataset_id, table.table_id))
        return sorted(names)

    def foreign_keys(self) -> list[ForeignKey]:
        """None that matter: BigQuery's foreign keys are informational and never enforced."""
        return []

    def counts_sql(self, tables: Sequence[str]) -> Statement:
        return Statement(
            " UNION ALL ".join(
                f"SELECT {i} AS n, COUNT(*) AS c FROM {self.quote_table(t)}"  # noqa: S608 - quoted
                for i, t in enumerate(tables)
            ),
            purpose="count rows",
        )

    def row_counts(self, tables: Iterable[str]) -> dict[str, int]:
        names = [self.qualify(t) for t in tables]
        if not names:
            return {}
        return {names[int(i)]: int(c) for i, c in self.query(self.counts_sql(names).sql)}

    # -- target truncate -----------------------------------------------------------------
    def lock_sql(self, tables: Sequence[str]) -> list[Statement]:
        """None: BigQuery has no table locks; the transaction's snapshot isolation stands in."""
        return []

    def empty_tables_sql(
        self, tables: Sequence[str], referenced_from_outside: Iterable[str]
    ) -> list[Statement]:
        """One script: ``TRUNCATE TABLE`` each table inside ``BEGIN``/``COMMIT TRANSACTION``."""
        if not tables:
            return []
        body = "\n".join(f"TRUNCATE TABLE {self.quote_table(t)};" for t in tables)
        return [Statement(f"BEGIN TRANSACTION;\n{body}\nCOMMIT TRANSACTION;", purpose="empty tables")]

    def empty_tables(
        self, tables: Sequence[str], referenced_from_outside: Iterable[str], outside: Sequence[str] = ()
    ) -> tuple[list[Statement], dict[str, int]]:
        """Count (just before), then empty every table in one transaction.

        BigQuery neither enforces foreign keys nor locks tables: the outside tables are counted
        just before, as the tables in scope are.
        """
        if outside:
            check_outside_empty(self.row_counts(outside))
        removed = self.row_counts(tables)
        statements = self.empty_tables_sql(tables, referenced_from_outside)
        self.run_statements(statements)
        return statements, removed

    def reset_sequences(self, tables: Sequence[str]) -> list[SequenceReset]:
        """Nothing to reset: BigQuery has no sequences or identity columns."""
        return []

    # -- point-in-time recovery ----------------------------------------------------------
    def point_in_time(self, settings: Any) -> BigQueryTimeTravel:
        return BigQueryTimeTravel(self)

    def time_travel_hours(self, dataset: str) -> int:
        """The dataset's time-travel window in hours (``max_time_travel_hours``, default 168)."""
        hours = self.client.get_dataset(dataset).max_time_travel_hours
        return int(hours) if hours else DEFAULT_TIME_TRAVEL_HOURS

    def created_at(self, table: str) -> datetime | None:
        from google.api_core.exceptions import NotFound

        try:
            return self.client.get_table(self.dotted(table)).created
        except NotFound:
            return None


def _parameter(name: str, value: Any) -> Any:
    from google.cloud import bigquery

    if isinstance(value, datetime):
        return bigquery.ScalarQueryParameter(name, "TIMESTAMP", value)
    if isinstance(value, bool):
        return bigquery.ScalarQueryParameter(name, "BOOL", value)
    if isinstance(value, int):
        return bigquery.ScalarQueryParameter(name, "INT64", value)
    return bigquery.ScalarQueryParameter(name, "STRING", str(value))


def timestamp_literal(moment: datetime) -> str:
    """``TIMESTAMP '2026-02-02 07:59:00.000000+00:00'`` from an aware datetime."""
    return f"TIMESTAMP '{moment.astimezone(UTC).strftime('%Y-%m-%d %H:%M:%S.%f')}+00:00'"


def _dataset(table: str) -> str:
    """The dataset of a qualified table name (``project.dataset`` for a three-part name)."""
    from sensei_airflow.names import parse_name

    parts = [p.text for p in parse_name(table, 3)]
    return ".".join(parts[:-1])


class BigQueryTimeTravel(PointInTimeRecovery):
    """Stage each table ``FOR SYSTEM_TIME AS OF`` the point, then replace the live rows in one transaction.

    1. ``CREATE OR REPLACE TABLE <t>__sensei_<token> AS SELECT * FROM <t> FOR SYSTEM_TIME AS OF <point>``
       for every table (reads only the live tables; fails here if the window has closed);
    2. one script: ``BEGIN TRANSACTION``, ``DELETE`` + ``INSERT ... SELECT *`` from the staged copy
       for every table, ``COMMIT TRANSACTION``: the live tables change together, and keep their
       schema, partitioning, clustering, policy tags and their own time-travel history;
    3. drop the staged copies (also when step 1 or 2 failed).

    Undo: the tables' history still holds the moment just before step 2 (``detail["undo_to"]``).
    """

    mechanism = "BigQuery time travel"

    def __init__(self, engine: BigQueryEngine, clock: Callable[[], datetime] | None = None) -> None:
        self.engine = engine
        self.clock = clock or (lambda: datetime.now(UTC))

    @staticmethod
    def staged(table: str, token: str) -> str:
        """The staged copy of ``table``: its exact name plus a suffix, in its dataset."""
        from sensei_airflow.names import format_name, parse_name

        *dataset, name = (p.text for p in parse_name(table, 3))
        return format_name([*dataset, f"{name}__sensei_{token}"])

    def stage_sql(self, table: str, token: str, target: RecoveryTarget) -> Statement:
        """The copy of ``table`` as of the point.

        The point is a ``TIMESTAMP`` literal with an explicit UTC offset, built from the aware
        datetime (never from request text): a constant, which every BigQuery implementation
        evaluates in ``FOR SYSTEM_TIME AS OF`` (the emulator accepts no parameter there).
        """
        quote = self.engine.quote_table
        return Statement(
            f"CREATE OR REPLACE TABLE {quote(self.staged(table, token))} AS "  # noqa: S608 - quoted
            f"SELECT * FROM {quote(table)} FOR SYSTEM_TIME AS OF {timestamp_literal(target.time)}",
            purpose=f"stage {table} as of {target.describe()}",
        )

    def replace_sql(self, tables: Sequence[str], token: str) -> Statement:
        quote = self.engine.quote_table
        lines = ["BEGIN TRANSACTION;"]
        lines += [f"DELETE FROM {quote(t)} WHERE TRUE;" for t in reversed(tables)]  # noqa: S608
        lines += [
            f"INSERT INTO {quote(t)} SELECT * FROM {quote(self.staged(t, token))};"  # noqa: S608
            for t in tables
        ]
        lines.append("COMMIT TRANSACTION;")
        return Statement("\n".join(lines), purpose="replace the live rows in one transaction")

    def drop_sql(self, tables: Sequence[str], token: str) -> list[Statement]:
        quote = self.engine.quote_table
        return [
            Statement(f"DROP TABLE IF EXISTS {quote(self.staged(t, token))}", purpose=f"drop the staged {t}")
            for t in tables
        ]

    def restore_sql(self, tables: Sequence[str], token: str, target: RecoveryTarget) -> list[Statement]:
        return [
            *(self.stage_sql(t, token, target) for t in tables),
            self.replace_sql(tables, token),
            *self.drop_sql(tables, token),
        ]

    def check(
        self,
        tables: Sequence[str],
        target: RecoveryTarget,
        hours: dict[str, int],
        created: dict[str, datetime | None],
        now: datetime,
    ) -> None:
        """Refuse a future point, a missing table, a table created after the point, or a closed window."""
        if target.time > now:
            raise PointInTimeRefused(
                f"restore_to {target.time.isoformat()} is in the future (now {now.isoformat()})"
            )
        for table in tables:
            made = created.get(table)
            if made is None:
                raise PointInTimeRefused(f"table {table} does not exist on {self.engine.conn_id}")
            earliest = now - timedelta(hours=hours[_dataset(table)]) + WINDOW_MARGIN
            if target.time < earliest:
                raise PointInTimeRefused(
                    f"dataset {_dataset(table)} keeps {hours[_dataset(table)]} h of time travel "
                    f"(max_time_travel_hours): {target.time.isoformat()} is outside it for {table} "
                    f"(earliest safe point now: {earliest.isoformat()})"
                )
            if made > target.time:
                raise PointInTimeRefused(
                    f"{table} was created (or replaced) at {made.isoformat()}, after {target.time.isoformat()}: "
                    "its time travel does not reach back to that point"
                )

    def _facts(self, tables: Sequence[str]) -> tuple[dict[str, int], dict[str, datetime | None]]:
        hours = {d: self.engine.time_travel_hours(d) for d in sorted({_dataset(t) for t in tables})}
        created = {t: self.engine.created_at(t) for t in tables}
        return hours, created

    def assess(
        self, tables: Sequence[str], target: RecoveryTarget, *, whole_database: bool
    ) -> PointInTimePlan:
        hours, created = self._facts(tables)
        self.check(tables, target, hours, created, self.clock())
        # the same for every attempt (execute re-plans): a retry replaces its own staged copies
        key = "|".join([target.time.astimezone(UTC).isoformat(), *tables])
        token = hashlib.sha256(key.encode()).hexdigest()[:8]
        return PointInTimePlan(
            tables=list(tables),
            path="table",
            steps=[s.sql for s in self.restore_sql(tables, token, target)],
            detail={"token": token, "time_travel_hours": hours},
        )

    def restore(self, plan: PointInTimePlan, target: RecoveryTarget) -> PointInTimeOutcome:
        token = str(plan.detail["token"])
        tables = list(plan.tables)
        hours, created = self._facts(tables)
        self.check(tables, target, hours, created, self.clock())
        stages = [self.stage_sql(t, token, target) for t in tables]
        replace = self.replace_sql(tables, token)
        drops = self.drop_sql(tables, token)
        undo_to = None
        try:
            self.engine.run_statements(stages)
            undo_to = self.clock().isoformat()
            self.engine.run_statements([replace])
        finally:
            self.engine.run_statements(drops)
        return PointInTimeOutcome(
            statements=[s.sql for s in [*stages, replace, *drops]],
            rows_restored=self.engine.row_counts(tables),
            detail={**plan.detail, "undo_to": undo_to},
        )

    def windows(self, tables: Sequence[str], point: datetime) -> list[RecoveryWindow]:
        hours, _ = self._facts(tables)
        now = self.clock()
        return [
            RecoveryWindow(
                mechanism=self.mechanism,
                table=t,
                earliest=now - timedelta(hours=hours[_dataset(t)]),
                latest=now,
                closes_at=point + timedelta(hours=hours[_dataset(t)]),
                limit="dataset time-travel window (max_time_travel_hours)",
            )
            for t in tables
        ]


def _utc(value: datetime) -> datetime:
    """A server time as an aware UTC datetime (a naive one is UTC: the query asked for UTC)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
