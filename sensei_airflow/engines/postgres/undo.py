"""PostgreSQL: the migration's start mark, and the undo log by logical decoding.

The mark is a restore point and an LSN, with each target table's rows and in-database checksum,
its sequences and a fingerprint of its columns, all read in one snapshot. With the undo log the
snapshot is the one a new logical replication slot (``test_decoding``) exports: the slot then
holds every change committed after exactly that snapshot, so the counts match the changes.

An undo reads the slot's changes with ``pg_logical_slot_peek_changes`` (peek: a retry reads the
same changes), reduces them to their net effect per key (the oldest change's old row is the row
at the mark; a key first inserted since the mark did not exist), and sets the touched rows back in
one transaction: inserts parents first, updates by key, deletes children first, sequences back to
the mark's values. Setting rows to their values at the mark is idempotent, so a retry after a
crash on either side of the commit changes nothing more (docs/adr/0700-undo-log-by-logical-decoding.md).
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sensei_airflow.engines.base import MarkMoment, MarkRefused, UndoLogRefused, UndoSummary, UndoTable
from sensei_airflow.engines.postgres.backup import table_checksums

if TYPE_CHECKING:
    from sensei_airflow.engines.postgres import PostgresEngine

#: options of test_decoding: no xids in the text (the function returns them), no empty transactions.
_DECODING_OPTIONS = ("include-xids", "0", "skip-empty-xacts", "1")

_SEQUENCES = """
SELECT s.oid::regclass::text, a.attname
FROM pg_depend d
JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
  AND d.refobjid = %s::regclass AND d.deptype IN ('a', 'i')
ORDER BY a.attnum
"""

#: the columns as DDL would change them: names, types, nullability, in order.
_FINGERPRINT = """
SELECT md5(coalesce(string_agg(quote_ident(attname) || ' ' || format_type(atttypid, atttypmod)
                                || CASE WHEN attnotnull THEN ' not null' ELSE '' END, ', ' ORDER BY attnum), ''))
FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped
"""

_REPLICA_IDENTITY = """
SELECT c.relreplident,
       (SELECT i.relname FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
        WHERE x.indrelid = c.oid AND x.indisreplident)
FROM pg_class c WHERE c.oid = %s::regclass
"""

#: unique, total indexes of a table, each as its column names.
_UNIQUE_KEYS = """
SELECT array_agg(a.attname ORDER BY a.attname)
FROM pg_index x CROSS JOIN LATERAL unnest(x.indkey) k(attnum)
JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.attnum
WHERE x.indrelid = %s::regclass AND x.indisunique AND x.indpred IS NULL AND x.indimmediate
GROUP BY x.indexrelid
"""

_COLUMNS = """
SELECT attname FROM pg_attribute
WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped AND attgenerated = ''
ORDER BY attnum
"""

_SLOT = "SELECT wal_status, pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint, active FROM pg_replication_slots WHERE slot_name = %s"


# -- connections -------------------------------------------------------------------------------
@contextmanager
def replication_connection(engine: PostgresEngine) -> Iterator[Any]:
    """A logical replication connection (``replication=database``) to the engine's database."""
    import psycopg

    with engine.connect() as plain:
        params = plain.info.get_parameters()
        password = plain.info.password
    if password:
        params["password"] = password
    with closing(psycopg.connect(**params, replication="database", autocommit=True)) as conn:
        yield conn


def _regclass_sql(engine: PostgresEngine, table: str) -> str:
    return engine.quote_table(table)


# -- the mark ------------------------------------------------------------------------------------
def take_mark(
    engine: PostgresEngine, name: str, tables: Sequence[str], *, undo_log: bool, slot: str
) -> MarkMoment:
    """The mark's moment, and with ``undo_log`` the slot opened at exactly that moment."""
    if not undo_log:
        with engine.connect() as conn, conn.cursor() as cur:
            conn.autocommit = True
            # the snapshot is taken by the first statement: the restore point, so that a recovery to
            # it and the counts read below see the same commits (no other session's round trip between)
            cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
            point: str | None = name
            notes: list[str] = []
            try:
                cur.execute("SELECT pg_create_restore_point(%s)", (name,))
            except Exception as exc:
                point, notes = (
                    None,
                    [f"no restore point was created ({str(exc).splitlines()[0]}); the LSN marks the start"],
                )
                cur.execute("ROLLBACK")
                cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
                cur.execute("SELECT 1")
            cur.execute("SELECT pg_current_wal_lsn()::text, clock_timestamp()")
            position, at = cur.fetchone()
            moment = _read_state(engine, cur, tables, at=at, position=position, restore_point=point)
            cur.execute("ROLLBACK")
        moment.notes += notes
        return moment
    level = engine.query("SHOW wal_level")[0][0]
    if level != "logical":
        raise MarkRefused(
            f"the undo log needs wal_level=logical on {engine.conn_id} (it is {level}): set wal_level = logical "
            "in postgresql.conf and restart the server, or disable rollback.undo_log"
        )
    identities = _full_replica_identity(engine, tables)
    drop_slot(engine, slot)  # one left by a mark that crashed before it was recorded
    # before the slot: a TRUNCATE committed after the slot's snapshot finds its trigger in place
    journals, notes = capture_truncates(engine, slot, tables)
    point, point_notes = _restore_point(engine, name)
    notes += point_notes
    with replication_connection(engine) as replication:
        try:
            row = replication.execute(
                f"CREATE_REPLICATION_SLOT {engine.quote_identifier(slot)} LOGICAL test_decoding EXPORT_SNAPSHOT"
            ).fetchone()
        except Exception as exc:
            raise MarkRefused(
                f"the undo log's replication slot could not be created on {engine.conn_id}: "
                f"{str(exc).splitlines()[0]} (free max_replication_slots, or grant the REPLICATION attribute)"
            ) from None
        consistent_point, snapshot = str(row[1]), str(row[2])
        with engine.connect() as conn, conn.cursor() as cur:
            conn.autocommit = True
            cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            cur.execute(f"SET TRANSACTION SNAPSHOT '{_snapshot_name(snapshot)}'")
            cur.execute("SELECT clock_timestamp()")
            at = cur.fetchone()[0]
            moment = _read_state(engine, cur, tables, at=at, position=consistent_point, restore_point=point)
            cur.execute("ROLLBACK")
    moment.undo_log = {"kind": "logical_decoding", "slot": slot, "replica_identity": identities}
    if journals:
        moment.undo_log["truncate_journals"] = {"schema": slot, "tables": journals}
    moment.notes += notes
    return moment


#: the message a TRUNCATE trigger writes to the change stream before the rows it saves
MESSAGE_PREFIX = "sensei_undo"
_MESSAGE = f"message: transactional: 1 prefix: {MESSAGE_PREFIX}, "

#: a TRUNCATE of a table in the undo log first copies its rows into the table's journal, whose
#: inserts the slot decodes like any others, after a transactional message naming the journal.
#: Our own rollbacks' TRUNCATEs set ``sensei.truncate_capture = off`` (no copy of a whole table);
#: a TRUNCATE whose rows were not saved (that setting, or any error) carries no message, and the
#: undo log then refuses the table. The user's TRUNCATE never fails because of the capture.
_SAVE_TRUNCATED = """
CREATE FUNCTION {schema}.save_truncated_rows() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $save$
BEGIN
    IF current_setting('sensei.truncate_capture', true) = 'off' THEN
        RETURN NULL;
    END IF;
    BEGIN
        PERFORM pg_logical_emit_message(true, '{prefix}', TG_ARGV[0] || ' ' || TG_ARGV[1]);
        EXECUTE format('INSERT INTO %I.%I SELECT * FROM %I.%I', TG_ARGV[0], TG_ARGV[1], TG_TABLE_SCHEMA, TG_TABLE_NAME);
    EXCEPTION WHEN OTHERS THEN
        RAISE WARNING 'the undo log could not save the rows of %.% before TRUNCATE (%): it will refuse to undo this table',
            TG_TABLE_SCHEMA, TG_TABLE_NAME, SQLERRM;
    END;
    RETURN NULL;
END
$save$
"""


def capture_truncates(
    engine: PostgresEngine, schema: str, tables: Sequence[str]
) -> tuple[dict[str, str], list[str]]:
    """A journal per table (``schema.tN``, its columns ``LIKE`` the table's) and a ``BEFORE TRUNCATE``
    trigger that saves the rows into it, so the change stream carries a TRUNCATE's rows.

    :param schema: the slot's name ([a-z0-9_]), so each undo log has its own and closing drops it.
    :returns: table -> journal name; empty, with a note, when the role may not create them (a
        TRUNCATE of a table in scope is then refused by the undo, as it carries no rows).
    """
    import psycopg
    import psycopg.sql

    if not re.fullmatch(r"[a-z0-9_]+", schema):  # it is written into the trigger's arguments
        raise MarkRefused(f"unexpected undo log name {schema!r}")
    quoted = engine.quote_identifier(schema)
    journals = {table: f"t{number}" for number, table in enumerate(tables, 1)}
    try:
        with engine.connect() as conn, conn.transaction(), conn.cursor() as cur:
            cur.execute(f"SET LOCAL lock_timeout = '{engine.lock_timeout}'")
            cur.execute(f"DROP SCHEMA IF EXISTS {quoted} CASCADE")  # left by a mark that crashed
            cur.execute(f"CREATE SCHEMA {quoted}")
            cur.execute(_SAVE_TRUNCATED.format(schema=quoted, prefix=MESSAGE_PREFIX))
            for table, journal in journals.items():
                target = engine.quote_table(table)
                cur.execute(f"CREATE TABLE {quoted}.{journal} (LIKE {target})")
                comment = psycopg.sql.Literal(
                    f"rows of {table} saved by a TRUNCATE, for the undo log {schema}"
                )
                cur.execute(f"COMMENT ON TABLE {quoted}.{journal} IS {comment.as_string(conn)}")
                cur.execute(
                    f"CREATE TRIGGER {quoted} BEFORE TRUNCATE ON {target} FOR EACH STATEMENT "
                    f"EXECUTE FUNCTION {quoted}.save_truncated_rows('{schema}', '{journal}')"
                )
    except psycopg.Error as exc:
        return {}, [
            f"a TRUNCATE of a migrated table cannot be undone by this undo log: its journal could not be "
            f"created ({str(exc).splitlines()[0]})"
        ]
    return journals, []


def _snapshot_name(name: str) -> str:
    """An exported snapshot's name (hex digits and dashes): checked, since SET TRANSACTION SNAPSHOT takes no parameter."""
    if not re.fullmatch(r"[0-9A-Fa-f\-]+", name):
        raise MarkRefused(f"unexpected snapshot name {name!r} from the replication slot")
    return name


def _restore_point(engine: PostgresEngine, name: str) -> tuple[str | None, list[str]]:
    """``pg_create_restore_point(name)`` where the role may; the LSN alone otherwise."""
    try:
        engine.query("SELECT pg_create_restore_point(%s)", (name,))
    except Exception as exc:
        return None, [f"no restore point was created ({str(exc).splitlines()[0]}); the LSN marks the start"]
    return name, []


def _read_state(
    engine: PostgresEngine,
    cur: Any,
    tables: Sequence[str],
    *,
    at: Any,
    position: str,
    restore_point: str | None,
) -> MarkMoment:
    quoted = {t: engine.quote_table(t) for t in tables}
    sums = table_checksums(cur, quoted)
    sequences: list[dict[str, Any]] = []
    schema: dict[str, str] = {}
    for table, name in quoted.items():
        cur.execute(_FINGERPRINT, (name,))
        schema[table] = str(cur.fetchone()[0])
        cur.execute(_SEQUENCES, (name,))
        for sequence, column in cur.fetchall():
            # the regclass text is quoted where needed: a catalog name, never user input
            cur.execute(f"SELECT last_value, is_called FROM {sequence}")  # noqa: S608
            last_value, is_called = cur.fetchone()
            sequences.append(
                {
                    "table": table,
                    "column": column,
                    "sequence": sequence,
                    "last_value": int(last_value),
                    "is_called": bool(is_called),
                }
            )
    return MarkMoment(
        at=at,
        position=position,
        restore_point=restore_point,
        tables={t: {"rows": s.rows, "checksum": s.checksum} for t, s in sums.items()},
        sequences=sequences,
        schema=schema,
    )


def _full_replica_identity(engine: PostgresEngine, tables: Sequence[str]) -> dict[str, list[str | None]]:
    """Set ``REPLICA IDENTITY FULL`` (old rows complete in the WAL); returns each table's original identity."""
    original: dict[str, list[str | None]] = {}
    with engine.connect() as conn, conn.transaction(), conn.cursor() as cur:
        cur.execute(f"SET LOCAL lock_timeout = '{engine.lock_timeout}'")
        for table in tables:
            cur.execute(_REPLICA_IDENTITY, (engine.quote_table(table),))
            kind, index = cur.fetchone()
            original[table] = [str(kind), index]
            if kind != "f":
                cur.execute(f"ALTER TABLE {engine.quote_table(table)} REPLICA IDENTITY FULL")
    return original


def restore_replica_identity(engine: PostgresEngine, identities: dict[str, list[str | None]]) -> list[str]:
    """Put back each table's replica identity as it was before the mark; tables gone are skipped."""
    done: list[str] = []
    existing = set(engine.user_tables())
    with engine.connect() as conn, conn.transaction(), conn.cursor() as cur:
        for table, (kind, index) in identities.items():
            if kind == "f" or table not in existing:
                continue
            clause = {"d": "DEFAULT", "n": "NOTHING"}.get(kind or "d")
            if kind == "i" and index:
                clause = f"USING INDEX {engine.quote_identifier(index)}"
            sql = f"ALTER TABLE {engine.quote_table(table)} REPLICA IDENTITY {clause or 'DEFAULT'}"
            cur.execute(sql)
            done.append(sql)
    return done


def drop_slot(engine: PostgresEngine, slot: str) -> bool:
    """Drop the slot if it exists (and no session streams from it); True when one was dropped."""
    rows = engine.query(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s AND NOT active",
        (slot,),
    )
    return bool(rows)


def slot_state(engine: PostgresEngine, slot: str) -> tuple[str, int] | None:
    """The slot's ``wal_status`` and the WAL bytes it retains, or None when it does not exist."""
    rows = engine.query(_SLOT, (slot,))
    if not rows:
        return None
    return str(rows[0][0]), int(rows[0][1] or 0)


def retained(engine: PostgresEngine, undo: dict[str, Any]) -> dict[str, Any]:
    found = slot_state(engine, undo["slot"])
    if found is None:
        return {"slot": undo["slot"], "exists": False}
    return {"slot": undo["slot"], "exists": True, "wal_status": found[0], "retained_wal_bytes": found[1]}


def close(engine: PostgresEngine, undo: dict[str, Any]) -> list[str]:
    done = []
    if drop_slot(engine, undo["slot"]):
        done.append(f"dropped replication slot {undo['slot']}")
    journals = undo.get("truncate_journals")
    if journals:
        # the triggers depend on the schema's function: CASCADE drops them with the journals
        sql = f"DROP SCHEMA IF EXISTS {engine.quote_identifier(journals['schema'])} CASCADE"
        with engine.connect() as conn, conn.transaction():
            conn.execute(sql)
        done.append(sql)
    done += restore_replica_identity(engine, undo.get("replica_identity") or {})
    return done


# -- refusals --------------------------------------------------------------------------------------
def problems(
    engine: PostgresEngine, undo: dict[str, Any], tables: Sequence[UndoTable], schema: dict[str, str]
) -> list[str]:
    """Why the undo log cannot undo ``tables`` now: one line each (empty: it can)."""
    slot = undo["slot"]
    found = slot_state(engine, slot)
    alternative = "roll back with backup_restore or point_in_time"
    if found is None:
        return [
            f"the undo log is gone: replication slot {slot} no longer exists on {engine.conn_id} (dropped, or "
            f"the rollback window closed); {alternative}"
        ]
    if found[0] == "lost":
        return [
            f"the undo log was invalidated: replication slot {slot} lost WAL it needed (wal_status lost: more "
            f"than max_slot_wal_keep_size was written since the mark); {alternative}"
        ]
    result: list[str] = []
    existing = set(engine.user_tables())
    for table in tables:
        if table.table not in existing:
            result.append(f"{table.table} no longer exists (DDL since the start mark); {alternative}")
            continue
        name = engine.quote_table(table.table)
        now = engine.query(_FINGERPRINT, (name,))[0][0]
        if schema.get(table.table) not in (None, now):
            result.append(
                f"{table.table} changed its columns since the start mark (DDL): the undo log cannot undo across "
                f"it; {alternative}"
            )
        kind = engine.query(_REPLICA_IDENTITY, (name,))[0][0]
        if kind != "f":
            result.append(
                f"{table.table} has replica identity {_IDENTITY_NAMES.get(kind, kind)} since the start mark (the "
                f"undo log needs FULL): its old rows were not captured; {alternative}"
            )
        key = sorted(engine.column_name(k) for k in table.key)
        if not any(sorted(cols) == key for (cols,) in engine.query(_UNIQUE_KEYS, (name,))):
            result.append(
                f"{table.table} has no primary key or unique index on ({', '.join(table.key)}), the manifest's key: "
                f"the undo log cannot tell its rows apart; {alternative}"
            )
    return result


_IDENTITY_NAMES = {"d": "DEFAULT", "n": "NOTHING", "i": "USING INDEX", "f": "FULL"}


# -- test_decoding output --------------------------------------------------------------------------
_IDENT = r'(?:"[^"]*(?:""[^"]*)*"|[a-z_][a-z0-9_$]*)'
_HEAD = re.compile(rf"^table ({_IDENT})\.({_IDENT}): (INSERT|UPDATE|DELETE): ")
_TRUNCATE = re.compile(r"^table (.*): TRUNCATE: ")
_NAME = re.compile(rf"({_IDENT})\.({_IDENT})")
_TOKEN = re.compile(
    rf"(?:(old-key|new-tuple): |(\(no-tuple-data\)))"
    rf"|({_IDENT})\[(?:[^\[\]]|\[\])*\]:(null|'[^']*(?:''[^']*)*'|[^ ]+)(?: |$)"
)


@functools.lru_cache(maxsize=4096)
def _unquote(ident: str) -> str:
    return ident[1:-1].replace('""', '"') if ident.startswith('"') else ident


def _value(text: str) -> str | None:
    if text == "null":
        return None
    if text.startswith("'"):
        return text[1:-1].replace("''", "'")
    if text.startswith("B'") and text.endswith("'"):  # bit strings
        return text[2:-1]
    return text


@dataclass
class Change:
    """One decoded row change: its table (schema, name), kind, and old and new rows (column -> text)."""

    schema: str
    table: str
    kind: str
    old: dict[str, str | None] | None = None
    new: dict[str, str | None] | None = None


@dataclass
class Truncate:
    tables: list[tuple[str, str]] = field(default_factory=list)


def parse_change(line: str) -> Change | Truncate | None:
    """One line of test_decoding output; None for BEGIN / COMMIT and anything else that is not a row.

    One pass of one regular expression over the line: a section marker (``old-key:``,
    ``new-tuple:``) or a column, whose quoted value may hold anything, markers included.
    """
    head = _HEAD.match(line)
    if head is None:
        truncate = _TRUNCATE.match(line)
        if truncate is None:
            return None
        return Truncate([(_unquote(s), _unquote(t)) for s, t in _NAME.findall(truncate.group(1))])
    kind = head.group(3)
    change = Change(_unquote(head.group(1)), _unquote(head.group(2)), kind)
    section: dict[str, str | None] = {}
    if kind == "INSERT":
        change.new = section
    else:
        change.old = section
    end = head.end()
    for token in _TOKEN.finditer(line, end):
        if token.start() != end:
            raise UndoLogRefused(f"unexpected logical decoding output near {line[end : end + 60]!r}")
        end = token.end()
        marker, no_data, name, value = token.groups()
        if no_data is not None:
            break
        if marker is not None:
            section = {}
            if marker == "old-key":
                change.old = section
            else:
                change.new = section
            continue
        if value[0] == "'":
            section[_unquote(name)] = value[1:-1].replace("''", "'")
        elif value == "null":
            section[_unquote(name)] = None
        else:
            section[_unquote(name)] = _value(value)
    else:
        if end != len(line):
            raise UndoLogRefused(f"unexpected logical decoding output near {line[end : end + 60]!r}")
    return change


def _leading_key(line: str, start: int, key_columns: tuple[str, ...]) -> Key:
    """The key of a line's first row section, reading no further than its key columns (an insert's
    new row and a known key's old row are not needed: reading them would cost most of the undo)."""
    found: dict[str, str | None] = {}
    for token in _TOKEN.finditer(line, start):
        marker, _, name, value = token.groups()
        if marker is not None:
            break
        column = _unquote(name)
        if column in key_columns:
            found[column] = _value(value)
            if len(found) == len(key_columns):
                break
    return tuple(found.get(k) for k in key_columns)


# -- net effect --------------------------------------------------------------------------------------
Key = tuple[str | None, ...]


@dataclass
class NetEffect:
    """Per table: each touched key's row at the mark (None: the key did not exist then), the kind of its
    last change, and the captured changes counted by kind."""

    before: dict[Key, dict[str, str | None] | None] = field(default_factory=dict)
    last: dict[Key, str] = field(default_factory=dict)
    captured: dict[str, int] = field(
        default_factory=lambda: {"insert": 0, "update": 0, "delete": 0, "truncate": 0}
    )

    def inverse(self) -> tuple[dict[Key, dict[str, str | None]], dict[Key, dict[str, str | None]], list[Key]]:
        """Rows to insert again (absent now), rows to set back (present now), keys to delete."""
        inserts: dict[Key, dict[str, str | None]] = {}
        updates: dict[Key, dict[str, str | None]] = {}
        deletes: list[Key] = []
        for key, row in self.before.items():
            absent_now = self.last[key] == "DELETE"
            if row is None:
                if not absent_now:
                    deletes.append(key)
            elif absent_now:
                inserts[key] = row
            else:
                updates[key] = row
        return inserts, updates, deletes


def net_effect(
    changes: Iterable[Change | Truncate | str],
    tables: dict[tuple[str, str], tuple[str, tuple[str, ...]]],
    journals: dict[tuple[str, str], str] | None = None,
) -> dict[str, NetEffect]:
    """Reduce changes (oldest first) to their net effect per table in ``tables``.

    A change given as a line of test_decoding output is read only as far as needed: not at all for
    a table outside ``tables``, the key only for an insert and for a delete of a key already seen.

    A TRUNCATE's rows come first, as inserts into the table's journal after a message naming it
    (see :func:`capture_truncates`): each saved row counts as a delete of the table's row.

    :param tables: (schema, name) -> (qualified table, exact key columns).
    :param journals: (schema, name) of a journal -> the qualified table whose TRUNCATEs it saves.
    :raises UndoLogRefused: for a TRUNCATE of a table in scope whose rows were not saved.
    """
    journals = journals or {}
    effects: dict[str, NetEffect] = {qualified: NetEffect() for qualified, _ in tables.values()}
    keys = {qualified: key for qualified, key in tables.values()}
    saved: dict[str, int] = dict.fromkeys(effects, 0)  # TRUNCATEs announced by a message, not yet seen
    for item in changes:
        change: Change | Truncate | None
        if isinstance(item, str):
            if item.startswith(_MESSAGE):
                schema, _, journal = item.partition(" content:")[2].partition(" ")
                announced = journals.get((schema, journal))
                if announced is not None and announced in saved:
                    saved[announced] += 1
                continue
            head = _HEAD.match(item)
            if head is None:
                change = parse_change(item)  # a TRUNCATE, or no row at all
                if change is None:
                    continue
            else:
                name = (_unquote(head.group(1)), _unquote(head.group(2)))
                found = tables.get(name)
                if found is None:
                    truncated = journals.get(name)
                    if truncated is not None and truncated in effects and head.group(3) == "INSERT":
                        _saved_row(item, head.end(), effects[truncated], keys[truncated])
                    continue
                kind = head.group(3)
                if kind != "UPDATE":
                    effect = effects[found[0]]
                    key = _leading_key(item, head.end(), found[1])
                    if kind == "INSERT":
                        effect.before.setdefault(key, None)
                        effect.last[key] = "INSERT"
                        effect.captured["insert"] += 1
                        continue
                    if key in effect.before:
                        effect.last[key] = "DELETE"
                        effect.captured["delete"] += 1
                        continue
                change = parse_change(item)
                assert change is not None
        else:
            change = item
        if isinstance(change, Truncate):
            for qualified in (tables[t][0] for t in change.tables if t in tables):
                if not saved[qualified]:
                    raise UndoLogRefused(
                        f"{qualified} was truncated since the start mark without its rows saved (by a sensei "
                        "rollback, or with the undo log's TRUNCATE trigger gone or failing): the undo log cannot "
                        "bring them back; roll back with backup_restore or point_in_time"
                    )
                saved[qualified] -= 1
            continue
        found = tables.get((change.schema, change.table))
        if found is None:
            continue
        qualified, key_columns = found
        effect = effects[qualified]
        if change.kind == "INSERT":
            assert change.new is not None
            key = tuple(change.new.get(k) for k in key_columns)
            effect.before.setdefault(key, None)
            effect.last[key] = "INSERT"
            effect.captured["insert"] += 1
        elif change.kind == "UPDATE":
            assert change.new is not None
            new_key = tuple(change.new.get(k) for k in key_columns)
            old = change.old
            if old is None:
                raise UndoLogRefused(
                    f"an update of {qualified} was logged without its old row (replica identity not FULL)"
                )
            old_key = tuple(old.get(k) for k in key_columns)
            effect.before.setdefault(old_key, old)
            effect.captured["update"] += 1
            if new_key != old_key:
                effect.last[old_key] = "DELETE"
                effect.before.setdefault(new_key, None)
            effect.last[new_key] = "UPDATE"
        else:
            assert change.old is not None
            key = tuple(change.old.get(k) for k in key_columns)
            effect.before.setdefault(key, change.old)
            effect.last[key] = "DELETE"
            effect.captured["delete"] += 1
    return effects


def _saved_row(line: str, start: int, effect: NetEffect, key_columns: tuple[str, ...]) -> None:
    """A row a TRUNCATE saved into its table's journal: a delete of that row (read whole only for a
    key not seen before, whose row it is at the mark)."""
    effect.captured["truncate"] += 1
    key = _leading_key(line, start, key_columns)
    if key not in effect.before:
        change = parse_change(line)
        assert isinstance(change, Change) and change.new is not None
        effect.before[key] = change.new
    effect.last[key] = "DELETE"


# -- reading and applying ------------------------------------------------------------------------------
#: the slot's lines of the tables in scope and of their journals (their prefix as test_decoding writes
#: it: the server's own quote_ident), every TRUNCATE line (which may name several tables) and the
#: journals' messages; the others never leave the server.
_PEEK = """
WITH prefixes AS (
    SELECT 'table ' || quote_ident(s) || '.' || quote_ident(t) || ': ' AS prefix
    FROM unnest(%s::text[], %s::text[]) AS scope (s, t)
)
SELECT c.data FROM pg_logical_slot_peek_changes(%s, %s::pg_lsn, NULL, %s, %s, %s, %s) c
WHERE c.data LIKE 'table %%: TRUNCATE: %%'
   OR starts_with(c.data, %s)
   OR EXISTS (SELECT FROM prefixes WHERE starts_with(c.data, prefixes.prefix))
"""


def _read(cur: Any, slot: str, upto: str | None, scope: Sequence[tuple[str, str]]) -> list[str]:
    """The slot's changes to the tables in ``scope`` ((schema, name) pairs), its TRUNCATEs and the
    journals' messages, as test_decoding lines, oldest first (peek: the slot keeps them)."""
    schemas, names = zip(*scope, strict=True) if scope else ((), ())
    cur.execute(_PEEK, (list(schemas), list(names), slot, upto, *_DECODING_OPTIONS, _MESSAGE))
    return [line for (line,) in cur]


def _changes(
    engine: PostgresEngine,
    cur: Any,
    undo: dict[str, Any],
    tables: Sequence[UndoTable],
    upto: str | None,
    seconds: dict[str, float] | None = None,
) -> dict[str, NetEffect]:
    """The net effect of the slot's changes (up to ``upto``, or all) on each of ``tables``; the time
    spent reading and reducing them goes into ``seconds``."""
    scope = _scope(engine, tables)
    saved = undo.get("truncate_journals") or {"schema": "", "tables": {}}
    in_scope = {t.table for t in tables}
    journals = {(saved["schema"], j): t for t, j in saved["tables"].items() if t in in_scope}
    started = time.perf_counter()
    lines = _read(cur, undo["slot"], upto, [*scope, *journals])
    read = time.perf_counter()
    effects = net_effect(lines, scope, journals)
    if seconds is not None:
        seconds.update(read=read - started, reduce=time.perf_counter() - read)
    return effects


def flush_wal(engine: PostgresEngine) -> None:
    """Flush the WAL written so far, so decoding sees every transaction committed until now.

    Decoding reads only flushed WAL; with ``synchronous_commit = off`` a commit may still wait in
    the WAL buffers. A transaction that writes WAL and commits synchronously flushes everything
    before its commit record; a temporary table's catalog rows are such a write (no privilege
    beyond TEMP, nothing left behind). A transaction that only takes an xid would not do: its
    commit is flushed only if it wrote WAL before it.
    """
    with engine.connect() as conn, conn.transaction(), conn.cursor() as cur:
        cur.execute("SET LOCAL synchronous_commit = on")
        cur.execute("CREATE TEMP TABLE sensei_undo_flush () ON COMMIT DROP")


def _scope(
    engine: PostgresEngine, tables: Sequence[UndoTable]
) -> dict[tuple[str, str], tuple[str, tuple[str, ...]]]:
    scope: dict[tuple[str, str], tuple[str, tuple[str, ...]]] = {}
    for table in tables:
        parts = engine.name_parts(table.table)
        scope[(parts[0], parts[-1])] = (table.table, tuple(engine.column_name(k) for k in table.key))
    return scope


def summary(
    engine: PostgresEngine, undo: dict[str, Any], tables: Sequence[UndoTable], sample: int
) -> UndoSummary:
    flush_wal(engine)
    with engine.connect() as conn, conn.cursor() as cur:
        effects = _changes(engine, cur, undo, tables, None)
        conn.rollback()
    result = UndoSummary(retained_bytes=(slot_state(engine, undo["slot"]) or ("", None))[1])
    for table in tables:
        effect = effects[table.table]
        inserts, updates, deletes = effect.inverse()
        result.per_table[table.table] = {
            "insert": len(inserts),
            "update": len(updates),
            "delete": len(deletes),
        }
        result.captured[table.table] = dict(effect.captured)
        key_names = [engine.column_name(k) for k in table.key]
        picked: list[dict[str, Any]] = []
        for kind, keys in (("delete", deletes), ("update", list(updates)), ("insert", list(inserts))):
            picked += [{"undo": kind, "key": dict(zip(key_names, k, strict=True))} for k in keys[:sample]]
        result.samples[table.table] = picked[:sample]
    return result


def apply(
    engine: PostgresEngine,
    undo: dict[str, Any],
    tables: Sequence[UndoTable],
    sequences: Sequence[dict[str, Any]],
) -> tuple[list[str], dict[str, int], dict[str, Any]]:
    """Undo the captured changes of ``tables`` (given parents first) in one transaction."""
    import psycopg.errors

    slot = undo["slot"]
    quoted = [engine.quote_table(t.table) for t in tables]
    statements: list[str] = []
    changed: dict[str, int] = {t.table: 0 for t in tables}
    #: where the undo's time went: reading the slot, reducing the changes, loading the rows at the
    #: mark into temporary tables, and the inverse statements themselves
    seconds: dict[str, float] = {}
    with engine.connect() as conn:
        try:
            with conn.transaction(), conn.cursor() as cur:
                lock = [
                    f"SET LOCAL lock_timeout = '{engine.lock_timeout}'",
                    # the change is small beside the table: probe the key for each changed row rather
                    # than hash or merge it against a scan of the whole table
                    "SET LOCAL enable_hashjoin = off",
                    "SET LOCAL enable_mergejoin = off",
                    f"LOCK TABLE {', '.join(quoted)} IN EXCLUSIVE MODE",
                ]
                for sql in lock:
                    cur.execute(sql)
                statements += lock
                found = problems(engine, undo, [], {})
                if found:
                    raise UndoLogRefused(found[0])
                flush_wal(engine)  # under the locks: every change to the tables in scope is committed before
                cur.execute("SELECT pg_current_wal_lsn()::text")
                upto = cur.fetchone()[0]
                effects = _changes(engine, cur, undo, tables, upto, seconds)
                started = time.perf_counter()
                plans = [_table_plan(engine, cur, t, i, effects[t.table]) for i, t in enumerate(tables)]
                for plan in plans:  # parents first
                    statements += plan.load(cur)
                loaded = time.perf_counter()
                seconds["load"] = loaded - started
                for plan in plans:
                    changed[plan.table] += plan.run(cur, plan.insert_sql, statements)
                for plan in plans:
                    changed[plan.table] += plan.run(cur, plan.update_sql, statements)
                for plan in reversed(plans):  # children first
                    changed[plan.table] += plan.run(cur, plan.delete_sql, statements)
                seconds["statements"] = time.perf_counter() - loaded
                in_scope = {t.table for t in tables}
                for seq in sequences:
                    if seq["table"] in in_scope:
                        cur.execute(
                            "SELECT setval(%s::regclass, %s, %s)",
                            (seq["sequence"], seq["last_value"], seq["is_called"]),
                        )
                        statements.append(
                            f"SELECT setval('{seq['sequence']}', {seq['last_value']}, {seq['is_called']})"
                        )
        except (psycopg.errors.ForeignKeyViolation, psycopg.errors.UniqueViolation) as exc:
            why = (exc.diag.message_primary or str(exc)).splitlines()[0]
            raise UndoLogRefused(
                f"undoing the changes would break a constraint ({why}); nothing was changed: add the "
                "referencing table to the scope, or roll back with backup_restore"
            ) from None
    # the slot is not advanced: the oldest change of a key holds its row at the mark, and a later
    # rollback (another scope, or after more writes) must still find it
    detail: dict[str, Any] = {"slot": slot, "read_up_to": upto, "seconds": seconds}
    return statements, changed, detail


@dataclass
class _TablePlan:
    """The inverse statements of one table, over temporary tables loaded with the rows at the mark."""

    table: str
    absent: list[list[str | None]]  # rows at the mark whose key is absent now: inserted again
    present: list[list[str | None]]  # rows at the mark whose key holds another row now: set back
    gone: list[Key]  # keys first inserted since the mark: deleted
    columns: list[str]
    key: list[str]
    index: int
    target: str
    quote: Any

    def temp(self, what: str) -> str:
        return f"sensei_undo_{what}_{self.index}"

    def load(self, cur: Any) -> list[str]:
        cols = ", ".join(self.quote(c) for c in self.columns)
        keys = ", ".join(self.quote(k) for k in self.key)
        done: list[str] = []
        for what, names, rows in (
            ("insert", cols, self.absent),
            ("update", cols, self.present),
            ("delete", keys, self.gone),
        ):
            if not rows:
                continue
            create = f"CREATE TEMP TABLE {self.temp(what)} ON COMMIT DROP AS SELECT {names} FROM {self.target} WITH NO DATA"  # noqa: S608
            cur.execute(create)
            with cur.copy(f"COPY {self.temp(what)} ({names}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            # statistics: without them the planner guesses the temporary table large and scans the
            # whole target table instead of probing its key, and the undo costs the table's size
            cur.execute(f"ANALYZE {self.temp(what)}")
            done += [create, f"COPY {self.temp(what)} ({names}) FROM STDIN", f"ANALYZE {self.temp(what)}"]
        return done

    def _match(self, left: str, right: str) -> str:
        return " AND ".join(f"{left}.{self.quote(k)} = {right}.{self.quote(k)}" for k in self.key)

    @property
    def insert_sql(self) -> str | None:
        if not self.absent:
            return None
        cols = ", ".join(self.quote(c) for c in self.columns)
        source = self.temp("insert")
        # NOT EXISTS: a retry never inserts a row twice
        return (
            f"INSERT INTO {self.target} ({cols}) OVERRIDING SYSTEM VALUE SELECT {cols} FROM {source} r "  # noqa: S608
            f"WHERE NOT EXISTS (SELECT FROM {self.target} x WHERE {self._match('x', 'r')})"
        )

    @property
    def update_sql(self) -> str | None:
        others = [c for c in self.columns if c not in self.key]
        if not self.present or not others:
            return None
        sets = ", ".join(f"{self.quote(c)} = r.{self.quote(c)}" for c in others)
        # compared as text (every type has a text form, not every type has equality): a row already
        # back at its value is not written again, so a retry reports what it really changed
        now = ", ".join(f"x.{self.quote(c)}::text" for c in others)
        then = ", ".join(f"r.{self.quote(c)}::text" for c in others)
        return (
            f"UPDATE {self.target} x SET {sets} FROM {self.temp('update')} r WHERE {self._match('x', 'r')} "  # noqa: S608
            f"AND ROW({now}, NULL) IS DISTINCT FROM ROW({then}, NULL)"
        )

    @property
    def delete_sql(self) -> str | None:
        if not self.gone:
            return None
        return f"DELETE FROM {self.target} x USING {self.temp('delete')} g WHERE {self._match('x', 'g')}"  # noqa: S608

    def run(self, cur: Any, sql: str | None, statements: list[str]) -> int:
        if sql is None:
            return 0
        cur.execute(sql)
        statements.append(sql)
        return max(cur.rowcount, 0)


def _table_plan(
    engine: PostgresEngine, cur: Any, table: UndoTable, index: int, effect: NetEffect
) -> _TablePlan:
    cur.execute(_COLUMNS, (engine.quote_table(table.table),))
    columns = [row[0] for row in cur.fetchall()]
    inserts, updates, deletes = effect.inverse()
    return _TablePlan(
        table=table.table,
        absent=[[row.get(c) for c in columns] for row in inserts.values()],
        present=[[row.get(c) for c in columns] for row in updates.values()],
        gone=deletes,
        columns=columns,
        key=[engine.column_name(k) for k in table.key],
        index=index,
        target=engine.quote_table(table.table),
        quote=engine.quote_identifier,
    )
