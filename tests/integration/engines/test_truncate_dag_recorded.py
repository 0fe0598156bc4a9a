"""The truncate strategy through the Oracle and SQL Server engines in a real rollback DAG run
(Airflow real, state store on real PostgreSQL).

No server of either can run here, so this does NOT show that a server accepts these statements
or would report these counts. The provider hook is a recording fake: it answers the catalog
queries with the rows stated in each case below, and every row count from the case's count
script, in order; it never computes an answer from the SQL it was sent. What is shown: the exact
statements a run sends (names with spaces, mixed case, reserved words, non-ASCII letters and
bracket characters quoted by the engine), the one transaction that empties the tables, and that
the run's verdict follows the counts it was given: the same run with a table still holding rows
after the change fails its verification.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from sensei_airflow.engines.mssql import MsSqlEngine
from sensei_airflow.engines.oracle import OracleEngine
from tests.fixtures import run_dag
from tests.integration.engines.conftest import RecordingHook, Reply, one_line

MANIFEST = """
id: mig_{kind}
source: {{conn_id: shop_source}}
target: {{conn_id: {kind}_target}}
state: {{conn_id: sensei_state}}
started_at: "{started_at}"
phases:
  - phase: 1
    tables:
      - {{source: public.users, target: '{parent}', key: [id]}}
  - phase: 2
    tables:
      - {{source: public.order_lines, target: '{child}', key: [id]}}
rollback:
  preferred_strategy: truncate
"""


@dataclass(frozen=True)
class Case:
    engine: type
    conn: dict[str, Any]
    parent: str  # as the manifest writes it
    child: str
    catalog: dict[str, list[tuple[Any, ...]]]  # pattern of a catalog query -> the rows it answers
    count_sql: str  # the engine's row count of one table: {table} quoted, {n} the bind number
    names: dict[str, str]  # parent, child, other -> the name as the engine shows it
    quoted: dict[str, str]  # the same, quoted by the engine
    listed: list[str]  # the catalog's table listing (ORDER BY schema, name in the server's collation)


CASES = {
    "oracle": Case(
        engine=OracleEngine,
        conn={"conn_type": "oracle", "host": "db", "login": "shop", "password": "x", "schema": "ORCL"},
        parent='shop."user"',
        child='shop."Order Lines Ü"',
        catalog={
            "CURRENT_SCHEMA": [("SHOP",)],
            "DB_UNIQUE_NAME": [("ORCL", "PDB1")],
            "all_tables t JOIN all_users": [
                ("SHOP", "CAMPAIGNS"),
                ("SHOP", "Order Lines Ü"),
                ("SHOP", "user"),
            ],
            "constraint_type = 'R'": [("FK_LINES_USER", "SHOP", "Order Lines Ü", "SHOP", "user", "ENABLED")],
        },
        count_sql="SELECT :{n}, COUNT(*) FROM {table}",
        names={"parent": 'SHOP."user"', "child": "SHOP.Order Lines Ü", "other": "SHOP.CAMPAIGNS"},
        quoted={"parent": '"SHOP"."user"', "child": '"SHOP"."Order Lines Ü"', "other": '"SHOP"."CAMPAIGNS"'},
        listed=["other", "child", "parent"],  # binary order: C < O < u
    ),
    "mssql": Case(
        engine=MsSqlEngine,
        conn={"conn_type": "mssql", "host": "db", "login": "sa", "password": "x", "schema": "shop"},
        parent='dbo."user"',
        child='"Sales Data"."Order] Lines Ü"',
        catalog={
            "@@SERVERNAME": [("sql1", "shop")],
            # the default collation is case-insensitive: dbo sorts before Sales Data
            "FROM sys.tables t JOIN sys.schemas": [
                ("dbo", "campaigns"),
                ("dbo", "user"),
                ("Sales Data", "Order] Lines Ü"),
            ],
            "sys.foreign_keys": [("FK_lines_user", "Sales Data", "Order] Lines Ü", "dbo", "user")],
        },
        count_sql="SELECT %s, COUNT_BIG(*) FROM {table}",
        names={"parent": "dbo.user", "child": "Sales Data.Order] Lines Ü", "other": "dbo.campaigns"},
        quoted={
            "parent": "[dbo].[user]",
            "child": "[Sales Data].[Order]] Lines Ü]",
            "other": "[dbo].[campaigns]",
        },
        listed=["other", "parent", "child"],
    ),
}


def count(case: Case, tables: list[str], rows: dict[str, int], lock: str = "") -> Reply:
    """The scripted answer to one row count of ``tables`` (roles: parent, child, other)."""
    sql = " UNION ALL ".join(
        case.count_sql.format(n=i, table=case.quoted[t]) + lock for i, t in enumerate(tables, start=1)
    )
    return Reply(sql, tuple(case.names[t] for t in tables), [(case.names[t], rows[t]) for t in tables])


BEFORE = {"parent": 40, "child": 120, "other": 2}
EMPTIED = {"parent": 0, "child": 0, "other": 2}


def script(case: Case, after: dict[str, int]) -> list[Reply]:
    """Every row count of one truncate run, in the order the runbook asks for them."""
    lock = " WITH (TABLOCKX, HOLDLOCK)" if case.engine is MsSqlEngine else ""
    counts = [
        count(case, ["child", "parent"], BEFORE),  # assess: the rows each table would lose
        count(case, case.listed, BEFORE),  # assess: the whole target, for verify
        count(case, ["child", "parent"], BEFORE),  # execute: the plan's counts, checked again
        count(case, ["child", "parent"], BEFORE, lock),  # execute: under the lock, what is removed
        count(case, ["child", "parent", "other"], after),  # verify
    ]
    if after != EMPTIED:  # investigate: the scope's counts now, then its fingerprints (counts too here)
        counts += [count(case, ["child", "parent"], after)] * 2
    return counts


def rollback(
    kind: str, after: dict[str, int], migrations_dir: Any, monkeypatch: Any
) -> tuple[Any, RecordingHook]:
    case = CASES[kind]
    hook = RecordingHook(answers=dict(case.catalog), scripted="COUNT", script=script(case, after))
    monkeypatch.setattr(case.engine, "_make_hook", lambda self: hook)
    monkeypatch.setenv(f"AIRFLOW_CONN_{kind.upper()}_TARGET", json.dumps(case.conn))
    started = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    (migrations_dir / f"mig_{kind}.yaml").write_text(
        MANIFEST.format(kind=kind, parent=case.parent, child=case.child, started_at=started)
    )
    out = run_dag("sensei_rollback", {"migration_id": f"mig_{kind}", "strategy": "truncate"})
    return out, hook


def trace(hook: RecordingHook, case: Case) -> list[Any]:
    """What the run did on the hook, in order: catalog queries by the pattern that answered them,
    every other statement as sent (one line, with its bind values), and the transaction calls."""
    out: list[Any] = []
    for call in hook.calls:
        if call[0] == "execute":
            known = next((p for p in case.catalog if re.search(p, call[1])), None)
            out.append(f"catalog {known}" if known else (one_line(call[1]), call[2]))
        elif call[0] in ("autocommit", "commit", "rollback"):
            out.append(" ".join(str(c) for c in call))
    # a read on its own connection ends with a rollback; those say nothing here
    return [t for t in out if t != "rollback"]


def counted(case: Case, tables: list[str], lock: str = "") -> tuple[str, tuple[str, ...]]:
    reply = count(case, tables, BEFORE, lock)
    return reply.sql, reply.params


MSSQL_IDENTITY = (
    "SELECT CAST(seed_value AS bigint), CAST(increment_value AS bigint) FROM sys.identity_columns "
    "WHERE object_id = OBJECT_ID(%s)"
)
MSSQL_DEFAULT_SEQUENCES = (
    "SELECT DISTINCT SCHEMA_NAME(s.schema_id), s.name FROM sys.default_constraints dc "
    "JOIN sys.sql_expression_dependencies d ON d.referencing_id = dc.object_id "
    "JOIN sys.sequences s ON s.object_id = d.referenced_id WHERE dc.parent_object_id = OBJECT_ID(%s) ORDER BY 1, 2"
)
MSSQL_RESET_IDENTITY = (
    "SELECT c.name, CAST(c.seed_value AS bigint), CAST(c.increment_value AS bigint) FROM sys.identity_columns c "
    "WHERE c.object_id = OBJECT_ID(%s)"
)
MSSQL_RESET_SEQUENCES = (
    "SELECT DISTINCT SCHEMA_NAME(s.schema_id), s.name, c.name, CAST(s.start_value AS bigint), "
    "CAST(s.increment AS bigint) FROM sys.default_constraints dc JOIN sys.columns c ON c.object_id = "
    "dc.parent_object_id AND c.column_id = dc.parent_column_id JOIN sys.sql_expression_dependencies d ON "
    "d.referencing_id = dc.object_id JOIN sys.sequences s ON s.object_id = d.referenced_id "
    "WHERE dc.parent_object_id = OBJECT_ID(%s)"
)
ORACLE_IDENTITY = (
    "SELECT i.column_name, i.generation_type, c.default_on_null, i.identity_options, i.sequence_name "
    "FROM all_tab_identity_cols i JOIN all_tab_columns c ON c.owner = i.owner AND c.table_name = i.table_name "
    "AND c.column_name = i.column_name WHERE i.owner = :1 AND i.table_name = :2 ORDER BY 1"
)


def expected_trace(kind: str) -> list[Any]:
    """Every statement of a truncate run of the parent (referenced) and child tables, in order."""
    case = CASES[kind]
    if kind == "mssql":
        lookups = [
            (MSSQL_IDENTITY, ("[dbo].[user]",)),  # emptied by DELETE: its identity is reseeded
            (MSSQL_DEFAULT_SEQUENCES, ("[Sales Data].[Order]] Lines Ü]",)),
            (MSSQL_DEFAULT_SEQUENCES, ("[dbo].[user]",)),
        ]
        return [
            "catalog @@SERVERNAME",  # assess: which server and database
            "catalog FROM sys.tables t JOIN sys.schemas",  # assess: the manifest's names resolved
            "catalog sys.foreign_keys",  # assess: the order, and what references the scope
            "catalog @@SERVERNAME",
            "catalog sys.foreign_keys",
            "catalog sys.foreign_keys",
            *lookups,  # assess: the statements the plan shows
            counted(case, ["child", "parent"]),
            "catalog FROM sys.tables t JOIN sys.schemas",
            counted(case, case.listed),
            # execute
            counted(case, ["child", "parent"]),
            "catalog sys.foreign_keys",
            "catalog sys.foreign_keys",
            *lookups,
            "autocommit False",
            ("SET LOCK_TIMEOUT 30000", ()),
            counted(case, ["child", "parent"], " WITH (TABLOCKX, HOLDLOCK)"),
            ("TRUNCATE TABLE [Sales Data].[Order]] Lines Ü]", ()),  # nothing references the child
            ("DELETE FROM [dbo].[user]", ()),  # the child references the parent: no TRUNCATE there
            "commit",
            # execute_sequences: nothing to reset (the catalog has no identity or sequence)
            (MSSQL_RESET_IDENTITY, ("[Sales Data].[Order]] Lines Ü]",)),
            (MSSQL_RESET_SEQUENCES, ("[Sales Data].[Order]] Lines Ü]",)),
            (MSSQL_RESET_IDENTITY, ("[dbo].[user]",)),
            (MSSQL_RESET_SEQUENCES, ("[dbo].[user]",)),
            "autocommit False",
            "commit",
            # verify
            counted(case, ["child", "parent", "other"]),
        ]
    lookups = [(ORACLE_IDENTITY, ("SHOP", "Order Lines Ü")), (ORACLE_IDENTITY, ("SHOP", "user"))]
    return [
        "catalog DB_UNIQUE_NAME",
        "catalog all_tables t JOIN all_users",
        "catalog constraint_type = 'R'",
        "catalog DB_UNIQUE_NAME",
        "catalog constraint_type = 'R'",
        "catalog constraint_type = 'R'",
        "catalog constraint_type = 'R'",
        *lookups,
        counted(case, ["child", "parent"]),
        "catalog all_tables t JOIN all_users",
        counted(case, case.listed),
        # execute
        counted(case, ["child", "parent"]),
        "catalog constraint_type = 'R'",
        "catalog constraint_type = 'R'",
        *lookups,
        "autocommit False",
        # TRUNCATE commits on its own in Oracle: a referenced scope is emptied by DELETEs in one transaction
        ('LOCK TABLE "SHOP"."Order Lines Ü", "SHOP"."user" IN EXCLUSIVE MODE WAIT 30', ()),
        counted(case, ["child", "parent"]),
        ('DELETE FROM "SHOP"."Order Lines Ü"', ()),
        ('DELETE FROM "SHOP"."user"', ()),
        "commit",
        "commit",
        # execute_sequences: no identity column to restart
        *lookups,
        "autocommit True",
        # verify
        counted(case, ["child", "parent", "other"]),
    ]


@pytest.mark.parametrize("kind", sorted(CASES))
def test_truncate_rollback_runs_through_the_engine(kind, databases, migrations_dir, airflow_db, monkeypatch):
    case = CASES[kind]
    out, hook = rollback(kind, EMPTIED, migrations_dir, monkeypatch)

    assert hook.script_errors == [] and hook.script == [], "every count answered, in the stated order"
    assert trace(hook, case) == expected_trace(kind)
    events = hook.events()  # the reads' rollbacks are left out of the trace: none inside the change
    begin = next(
        i for i, e in enumerate(events) if e.startswith(("execute SET LOCK_TIMEOUT", "execute LOCK"))
    )
    assert "rollback" not in events[begin : events.index("commit", begin)]
    assert out.state == "success", out.task_states
    status = out.xcoms["document"]
    assert status["rollback_status"] == "completed"
    assert status["scope"]["tables"] == [case.names["child"], case.names["parent"]]
    assert status["verification"]["record_counts_match"] is True


@pytest.mark.parametrize("kind", sorted(CASES))
def test_the_verdict_follows_the_counts_the_engine_reports(
    kind, databases, migrations_dir, airflow_db, monkeypatch
):
    """The same run, but the engine reports rows left in the child after the change: verify fails."""
    case = CASES[kind]
    out, hook = rollback(kind, {**EMPTIED, "child": 3}, migrations_dir, monkeypatch)

    assert hook.script_errors == [] and hook.script == []
    # the same statements, then investigate reads the scope as it is now (counts, fingerprints)
    assert trace(hook, case) == [*expected_trace(kind), *[counted(case, ["child", "parent"])] * 2]
    assert out.task_states["verify"] == "failed", out.task_states
    status = out.xcoms["document"]
    assert status["rollback_status"] == "failed"
    assert status["verification"]["record_counts_match"] is False
    report = databases.scalar(
        "state", "SELECT report_markdown FROM sensei.rollback_runs WHERE rollback_id = %s", (out.run_id,)
    )
    assert (
        f"verify (try 1): RefusedError: verification failed: {case.names['child']} empty after rollback: "
        "expected 0, found 3; consumers stay halted"
    ) in report
