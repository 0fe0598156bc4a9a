"""Every ``pg_catalog`` question the PostgreSQL engine asks, written once.

Each function takes ``on``, an open psycopg connection or cursor (both answer ``execute(sql,
params)`` with something to ``fetchall()`` from), and runs in whatever transaction the caller
holds there: a catalog read inside a restore's transaction sees that transaction's locks and
changes. Tables are passed as quoted, qualified names (``engine.quote_table``); a table that
does not exist answers empty (``to_regclass``), never with an error.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

USER_TABLES = """
SELECT n.nspname, c.relname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%%' AND n.nspname NOT LIKE 'pg\\_temp%%'
ORDER BY 1, 2
"""

FOREIGN_KEYS = """
SELECT con.conname, cn.nspname, c.relname, pn.nspname, p.relname
FROM pg_constraint con
JOIN pg_class c ON c.oid = con.conrelid JOIN pg_namespace cn ON cn.oid = c.relnamespace
JOIN pg_class p ON p.oid = con.confrelid JOIN pg_namespace pn ON pn.oid = p.relnamespace
WHERE con.contype = 'f'
ORDER BY 2, 3, 1
"""

COLUMNS = """
SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute
WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped ORDER BY attnum
"""

#: the sequences owned by a table's serial ('a') and identity ('i') columns, with the column and start.
SEQUENCE_COLUMNS = """
SELECT s.oid::regclass::text, a.attname, q.seqstart
FROM pg_depend d
JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
JOIN pg_sequence q ON q.seqrelid = s.oid
JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
  AND d.refobjid = to_regclass(%s) AND d.deptype IN ('a', 'i')
ORDER BY a.attnum, 1
"""

FOREIGN_KEY_PARENTS = """
SELECT con.conname, pn.nspname, p.relname FROM pg_constraint con
JOIN pg_class p ON p.oid = con.confrelid JOIN pg_namespace pn ON pn.oid = p.relnamespace
WHERE con.contype = 'f' AND con.conrelid = to_regclass(%s) ORDER BY 1
"""

FOREIGN_KEY_DEFINITIONS = """
SELECT con.conname, con.conrelid::regclass::text, pg_get_constraintdef(con.oid),
       obj_description(con.oid, 'pg_constraint')
FROM pg_constraint con
WHERE con.contype = 'f' AND con.conrelid = ANY(%s::regclass[])
ORDER BY con.conrelid::regclass::text, con.conname
"""

REBUILDABLE_INDEXES = """
SELECT i.indexrelid::regclass::text, i.indrelid::regclass::text, con.conname, pg_get_constraintdef(con.oid),
       pg_get_indexdef(i.indexrelid), obj_description(i.indexrelid, 'pg_class'),
       obj_description(con.oid, 'pg_constraint')
FROM pg_index i
LEFT JOIN pg_constraint con
       ON con.conindid = i.indexrelid AND con.conrelid = i.indrelid AND con.contype IN ('p', 'u', 'x')
WHERE i.indrelid = ANY(%s::regclass[]) AND i.indisvalid AND NOT i.indisclustered AND NOT i.indisreplident
  AND NOT EXISTS (SELECT 1 FROM pg_constraint f WHERE f.contype = 'f' AND f.conindid = i.indexrelid)
ORDER BY 2, con.conname IS NULL, 1
"""

UNIQUE_KEYS = """
SELECT array_agg(a.attname::text) FROM pg_index i
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
WHERE i.indrelid = to_regclass(%s) AND i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL
GROUP BY i.indexrelid
"""

TABLE_GRANTS = """
SELECT r.rolname, n.nspname, c.relname, a.privilege_type, a.is_grantable
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
CROSS JOIN LATERAL aclexplode(c.relacl) a
JOIN pg_roles r ON r.oid = a.grantee
WHERE r.rolname = ANY(%s) AND c.oid = ANY(ARRAY(SELECT to_regclass(t) FROM unnest(%s::text[]) t))
  AND a.grantee <> c.relowner
ORDER BY 1, 2, 3, 4
"""

#: who holds a bigint advisory lock (split into its high and low halves) on the current database.
ADVISORY_LOCK_HOLDER = """
SELECT a.pid, a.application_name, a.backend_start
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.classid = %s::bigint::oid AND l.objid = %s::bigint::oid
"""

#: the tables of a schema whose names start with a prefix: name, comment, total size.
TABLES_IN_SCHEMA = """
SELECT c.relname, obj_description(c.oid, 'pg_class'), pg_total_relation_size(c.oid)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relkind = 'r' AND starts_with(c.relname, %s) ORDER BY c.relname
"""

#: what point-in-time recovery needs to know of the live server and its WAL archiver.
ARCHIVER_FACTS = """
SELECT current_setting('wal_level'), current_setting('archive_mode'), pg_is_in_recovery(),
       now(), current_database(), current_user,
       (SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'),
       a.last_archived_wal, a.last_archived_time, a.last_failed_wal, a.last_failed_time
FROM pg_stat_archiver a
"""
ARCHIVER_FACT_NAMES = (
    *("wal_level", "archive_mode", "in_recovery", "now", "database", "user", "segment_size"),
    *("last_archived_wal", "last_archived_time", "last_failed_wal", "last_failed_time"),
)


def _rows(on: Any, sql: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
    return [tuple(row) for row in on.execute(sql, params).fetchall()]


def user_tables(on: Any) -> list[tuple[str, str]]:
    """``(schema, table)`` of every user table (partitions through their parent)."""
    return [(schema, name) for schema, name in _rows(on, USER_TABLES)]


def foreign_keys(on: Any) -> list[tuple[str, str, str, str, str]]:
    """``(constraint, child schema, child, parent schema, parent)`` of every foreign key."""
    return [(a, b, c, d, e) for a, b, c, d, e in _rows(on, FOREIGN_KEYS)]


def columns(on: Any, quoted_table: str) -> list[tuple[str, str]]:
    """``(name, format_type)`` of each column of a table, in order (empty if the table is missing)."""
    return [(name, type_) for name, type_ in _rows(on, COLUMNS, (quoted_table,))]


def column_names(on: Any, quoted_table: str) -> list[str]:
    return [name for name, _ in columns(on, quoted_table)]


def sequence_columns(on: Any, quoted_table: str) -> list[tuple[str, str, int]]:
    """``(sequence, column, start value)`` for each sequence owned by a serial or identity column.

    The sequence is its ``regclass`` text: quoted where needed, schema-qualified where the
    search path does not find it, so it can be pasted into SQL as it is.
    """
    return [(seq, column, int(start)) for seq, column, start in _rows(on, SEQUENCE_COLUMNS, (quoted_table,))]


def owned_sequences(on: Any, quoted_table: str) -> list[str]:
    """The sequences owned by a table's serial and identity columns."""
    return sorted({sequence for sequence, _, _ in sequence_columns(on, quoted_table)})


def sequence_state(on: Any, sequence: str) -> tuple[int, bool]:
    """``(last_value, is_called)`` of a sequence (its regclass text, as :func:`sequence_columns` gives it)."""
    row = on.execute(f"SELECT last_value, is_called FROM {sequence}").fetchone()  # noqa: S608 - regclass text
    return int(row[0]), bool(row[1])


def foreign_key_parents(on: Any, quoted_table: str) -> list[tuple[str, str, str]]:
    """``(constraint, parent schema, parent)`` of each foreign key of a table."""
    return [
        (name, schema, parent) for name, schema, parent in _rows(on, FOREIGN_KEY_PARENTS, (quoted_table,))
    ]


def foreign_key_definitions(on: Any, quoted_tables: list[str]) -> list[dict[str, Any]]:
    """The foreign keys whose referencing side is one of the tables: name, table, definition, comment."""
    return [
        {"name": name, "table": table, "definition": definition, "comment": comment}
        for name, table, definition, comment in _rows(on, FOREIGN_KEY_DEFINITIONS, (quoted_tables,))
    ]


def rebuildable_indexes(on: Any, quoted_tables: list[str]) -> list[dict[str, Any]]:
    """Indexes of the tables that can be dropped for a load and built again after it.

    Run after the tables' own foreign keys were set aside: an index that a foreign key of a table
    outside the scope still relies on is kept, as are clustered, replica-identity and invalid ones.
    Primary-key, unique and exclusion indexes come back through their constraint (same name,
    same definition), the others through their own ``CREATE INDEX``; comments are kept.
    """
    return [
        {"index": index, "table": table, "constraint": constraint, "constraint_definition": constraint_def,
         "definition": definition, "comment": comment, "constraint_comment": constraint_comment}
        for index, table, constraint, constraint_def, definition, comment, constraint_comment
        in _rows(on, REBUILDABLE_INDEXES, (quoted_tables,))
    ]  # fmt: skip


def unique_keys(on: Any, quoted_table: str) -> list[set[str]]:
    """Column sets of the table's primary key and unique indexes (no expressions, no predicates)."""
    return [set(row[0]) for row in _rows(on, UNIQUE_KEYS, (quoted_table,))]


def table_grants(
    on: Any, roles: list[str], quoted_tables: list[str]
) -> list[tuple[str, str, str, str, bool]]:
    """``(role, schema, table, privilege, grantable)`` granted directly to ``roles`` on the tables."""
    return [
        (role, schema, name, privilege, bool(grantable))
        for role, schema, name, privilege, grantable in _rows(on, TABLE_GRANTS, (roles, quoted_tables))
    ]


def role_exists(on: Any, role: str) -> bool:
    return bool(_rows(on, "SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)))


def advisory_lock_holder(on: Any, key: int) -> tuple[int, str, Any] | None:
    """``(pid, application_name, backend_start)`` of the session holding bigint advisory lock ``key``."""
    rows = _rows(on, ADVISORY_LOCK_HOLDER, ((key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF))
    return (rows[0][0], rows[0][1], rows[0][2]) if rows else None


def existing_tables(on: Any, quoted_tables: list[str]) -> set[str]:
    """Which of the quoted tables exist."""
    found = _rows(on, "SELECT t FROM unnest(%s::text[]) t WHERE to_regclass(t) IS NOT NULL", (quoted_tables,))
    return {row[0] for row in found}


def exists(on: Any, quoted_name: str) -> bool:
    """Whether a table (or other relation) exists."""
    return bool(_rows(on, "SELECT to_regclass(%s) IS NOT NULL", (quoted_name,))[0][0])


def schema_exists(on: Any, schema: str) -> bool:
    return bool(_rows(on, "SELECT to_regnamespace(%s) IS NOT NULL", (schema,))[0][0])


def tables_in_schema(on: Any, schema: str, prefix: str) -> list[tuple[str, str | None, int]]:
    """``(name, comment, total bytes)`` of the tables of ``schema`` whose names start with ``prefix``."""
    return [
        (name, comment, int(size)) for name, comment, size in _rows(on, TABLES_IN_SCHEMA, (schema, prefix))
    ]


def has_rows(on: Any, quoted_table: str) -> bool:
    """Whether a table holds at least one row (reads one row, not the table)."""
    return bool(_rows(on, f"SELECT EXISTS (SELECT 1 FROM {quoted_table})")[0][0])  # noqa: S608


def estimated_rows(on: Any, quoted_table: str) -> float:
    """The planner's row estimate of a table (0 when never analysed)."""
    rows = _rows(
        on, "SELECT greatest(reltuples, 0) FROM pg_class WHERE oid = to_regclass(%s)", (quoted_table,)
    )
    return float(rows[0][0]) if rows else 0.0


def archiver_facts(on: Any) -> dict[str, Any]:
    """WAL level, archiving, recovery, clock, database, user, segment size and the archiver's last results."""
    return dict(zip(ARCHIVER_FACT_NAMES, _rows(on, ARCHIVER_FACTS)[0], strict=True))


def system_identifier(on: Any) -> str:
    """The cluster's system identifier (restricted on some managed services: raises there)."""
    return str(_rows(on, "SELECT system_identifier FROM pg_control_system()")[0][0])
