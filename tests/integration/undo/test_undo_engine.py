"""The PostgreSQL undo log at the engine: changes committed asynchronously are undone too."""

from __future__ import annotations

import psycopg

from sensei_airflow.engines.base import UndoTable
from tests.fixtures import Databases


def test_an_asynchronous_commit_just_before_the_undo_is_undone(logical_databases: Databases) -> None:
    """Decoding reads only flushed WAL: a commit with synchronous_commit=off still in the WAL buffers
    must be flushed by the undo, or its change would be left in place."""
    from sensei_airflow.engines.postgres import PostgresEngine

    cluster = logical_databases.cluster
    with psycopg.connect(cluster.dsn(), autocommit=True) as admin:
        admin.execute("ALTER SYSTEM SET wal_writer_delay = '10s'")  # the WAL writer will not flush it first
        admin.execute("SELECT pg_reload_conf()")
    try:
        engine = PostgresEngine("shop_target")
        with logical_databases.connect("target") as conn:
            conn.execute('CREATE TABLE "Sales Data" (id int PRIMARY KEY, "order" text)')
            conn.execute("""INSERT INTO "Sales Data" SELECT g, 'it''s ' || g FROM generate_series(1, 50) g""")
        name = engine.qualify('"Sales Data"')
        mark = engine.take_mark("t", [name], undo_log=True, slot="sensei_undo_async")
        with logical_databases.connect("target") as conn:
            conn.execute("SET synchronous_commit = off")
            conn.execute("""DELETE FROM "Sales Data" WHERE id <= 5""")
            conn.execute("""UPDATE "Sales Data" SET "order" = 'Ünal' WHERE id = 6""")
            conn.execute("""INSERT INTO "Sales Data" VALUES (51, 'new')""")
        _, changed, _ = engine.apply_undo(mark.undo_log or {}, [UndoTable(name, ("id",))], [])
        assert changed == {name: 7}
        assert engine.table_checksums([name])[name].checksum == mark.tables[name]["checksum"]
    finally:
        with psycopg.connect(cluster.dsn(), autocommit=True) as admin:
            admin.execute("ALTER SYSTEM RESET wal_writer_delay")
            admin.execute("SELECT pg_reload_conf()")


def test_toasted_values_are_restored_from_the_old_row(logical_databases: Databases) -> None:
    """An update of another column logs a large (TOASTed) value as unchanged in the new row; the old row,
    complete under REPLICA IDENTITY FULL, brings it back, as does a delete."""
    from sensei_airflow.engines.postgres import PostgresEngine

    engine = PostgresEngine("shop_target")
    with logical_databases.connect("target") as conn:
        conn.execute('CREATE TABLE docs (id int PRIMARY KEY, "user" text, body text)')
        conn.execute(
            "INSERT INTO docs SELECT g, 'Zoë', (SELECT string_agg(md5(random()::text || i || g), '') "
            "FROM generate_series(1, 4000) i) FROM generate_series(1, 3) g"
        )
    name = engine.qualify("docs")
    mark = engine.take_mark("t", [name], undo_log=True, slot="sensei_undo_toast")
    with logical_databases.connect("target") as conn:
        conn.execute("""UPDATE docs SET "user" = 'O''Brien' WHERE id = 1""")
        conn.execute("UPDATE docs SET body = 'short' WHERE id = 2")
        conn.execute("DELETE FROM docs WHERE id = 3")
    engine.apply_undo(mark.undo_log or {}, [UndoTable(name, ("id",))], [])
    assert engine.table_checksums([name])[name].checksum == mark.tables[name]["checksum"]
    assert logical_databases.scalar("target", "SELECT min(length(body)) FROM docs") == 4000 * 32


def test_the_mark_creates_its_restore_point_as_its_snapshot_or_says_why_not(
    databases: Databases, monkeypatch
) -> None:
    """Without the undo log the restore point is the first statement of the mark's snapshot; a role
    that may not create one still gets a mark, marked by its LSN, and a note says why."""
    import json

    from sensei_airflow.engines.postgres import PostgresEngine

    with databases.connect("target") as conn:
        conn.execute('CREATE TABLE "Zoë\'s order" (id int PRIMARY KEY)')
        conn.execute('INSERT INTO "Zoë\'s order" SELECT generate_series(1, 7)')
        conn.execute(
            'DO $$ BEGIN CREATE ROLE "mark reader Zoë" LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$'
        )
        conn.execute('GRANT SELECT ON "Zoë\'s order" TO "mark reader Zoë"')
    name = PostgresEngine("shop_target").qualify('"Zoë\'s order"')

    marked = PostgresEngine("shop_target").take_mark("sensei_mark_test", [name], undo_log=False, slot="")
    assert marked.restore_point == "sensei_mark_test" and marked.notes == []
    assert marked.tables[name]["rows"] == 7 and marked.position

    uri = databases.cluster.uri(databases.target, user="mark reader Zoë")
    monkeypatch.setenv("AIRFLOW_CONN_MARK_READER", json.dumps({"conn_type": "postgres", **_parts(uri)}))
    plain = PostgresEngine("mark_reader").take_mark("sensei_mark_test_2", [name], undo_log=False, slot="")
    assert plain.restore_point is None
    assert plain.notes == [
        "no restore point was created (permission denied for function pg_create_restore_point); the LSN marks "
        "the start"
    ]
    assert plain.tables[name] == marked.tables[name] and plain.position


def _parts(uri: str) -> dict[str, object]:
    from urllib.parse import unquote, urlsplit

    url = urlsplit(uri)
    return {
        "host": url.hostname,
        "port": url.port,
        "login": unquote(url.username or ""),
        "schema": url.path[1:],
    }
