"""undo_log against backup_restore and table-level point_in_time, on one table that held its rows before.

One cluster with ``wal_level=logical`` and WAL archiving (fsync off, as in the tests). A table of
``SENSEI_BENCH_ROWS`` rows (default 5M) exists before the migration; a logical backup and a base
backup are taken, then the start mark with the undo log. After the mark the "migration" inserts
1% of the rows and updates 0.2% of the existing ones, and 0.1% are deleted after the cutover
(at 5M: 50k + 10k + 5k = 65k changes). Each strategy then returns the table to the mark, in the
same run, and the table's checksum is compared with the mark's after each:

* **undo_log**: ``PostgresEngine.apply_undo`` (read the slot, reduce, apply in one transaction);
* **backup_restore**: ``PostgresEngine.restore_tables`` from the logical backup (one transaction);
* **point_in_time**: ``PostgresWalRecovery.assess`` + ``restore`` (scratch cluster, copy back).

Goals: undo_log at most 1/20 of the faster of the other two, and at most 2 s for the 65k changes.
Also reported: what the mark costs at ``ROWS/5`` and ``2*ROWS`` rows (1M and 10M at the default),
and the write overhead of the undo log on a forward ``COPY`` of ``ROWS/5`` rows (a table under the
undo log: replica identity FULL and an open slot; inserts log the same WAL either way, the slot
only keeps it).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from typing import Any

from benchmarks import goals
from sensei_airflow.local_postgres import LocalCluster, free_port, new_cluster_dir

ROWS = int(os.environ.get("SENSEI_BENCH_ROWS", "5000000"))
UNDO_GOAL_RATIO = 20
UNDO_GOAL_SECONDS = 2.0
TABLE = "public.big"
DDL = "CREATE TABLE {name} (id bigint PRIMARY KEY, n integer NOT NULL, payload text NOT NULL)"


def _timed(work: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = work()
    return time.perf_counter() - started, result


def _fill(conn: Any, name: str, rows: int) -> None:
    conn.execute(DDL.format(name=name))
    conn.execute(
        f"INSERT INTO {name} SELECT g, g %% 1000, md5(g::text) || md5((g * 7)::text) "  # noqa: S608 - constants
        "FROM generate_series(1, %s) g",
        (rows,),
    )
    conn.execute(f"VACUUM ANALYZE {name}")


def _change(conn: Any) -> int:
    """The migration's inserts and updates of rows that were there, then deletes after the cutover."""
    inserts, updates, deletes = ROWS // 100, ROWS // 500, ROWS // 1000
    conn.execute(
        "INSERT INTO big SELECT g, -1, 'migrated ' || g FROM generate_series(%s::bigint, %s::bigint) g",
        (ROWS + 1, ROWS + inserts),
    )
    conn.execute("UPDATE big SET n = -2, payload = 'merged' WHERE id <= %s", (updates,))
    conn.execute("DELETE FROM big WHERE id > %s AND id <= %s", (updates, updates + deletes))
    return inserts + updates + deletes


def _checksum(engine: Any) -> str:
    return str(engine.table_checksums([TABLE])[TABLE].checksum)


def run() -> list[str]:
    import psycopg

    from sensei_airflow.backups.catalog import BackupCatalog
    from sensei_airflow.backups.logical import opener, take_logical_backup
    from sensei_airflow.engines.base import RecoveryTarget, UndoTable
    from sensei_airflow.engines.postgres import PostgresEngine
    from sensei_airflow.engines.postgres.pitr import PostgresWalRecovery
    from sensei_airflow.manifest import PointInTimeSettings
    from sensei_airflow.state import StateStore
    from tests.integration.pitr.clusters import ArchivingCluster, _postgres_owned

    root = new_cluster_dir("sensei-bench-undo-")
    archive = _postgres_owned(root / "archive")
    cluster = LocalCluster(
        root / "live",
        free_port(),
        settings={
            "wal_level": "logical",
            "archive_mode": "on",
            "archive_command": f"test ! -f {archive}/%f && cp %p {archive}/%f",
            "max_wal_senders": "8",
            "max_replication_slots": "8",
            "synchronize_seqscans": "off",
        },
    )
    lines: list[str] = []
    try:
        cluster.start()
        archiving = ArchivingCluster(root, cluster, archive, root / "backups", root / "scratch")
        archiving.base_backup()
        os.environ["AIRFLOW_CONN_BENCH_UNDO"] = cluster.create_database("bench")
        os.environ["AIRFLOW_CONN_BENCH_STATE"] = cluster.create_database("bench_state")
        engine = PostgresEngine("bench_undo")
        engine.hook  # noqa: B018 - Airflow and the hook are loaded in a task already: not timed
        with psycopg.connect(cluster.dsn("bench"), autocommit=True) as conn:
            _fill(conn, "big", ROWS)
            size = conn.execute("SELECT pg_size_pretty(pg_total_relation_size('big'))").fetchone()[0]

        # the mark's cost at two sizes (without and with the undo log), on tables of their own
        for rows in (ROWS // 5, ROWS * 2):
            name = f"mark_{rows}"
            with psycopg.connect(cluster.dsn("bench"), autocommit=True) as conn:
                _fill(conn, name, rows)
            plain, _ = _timed(
                lambda name=name: engine.take_mark("bench_mark", [f"public.{name}"], undo_log=False, slot="")
            )
            with_log, moment = _timed(
                lambda name=name: engine.take_mark(
                    "bench_mark", [f"public.{name}"], undo_log=True, slot="bench_mark"
                )
            )
            engine.close_undo_log(moment.undo_log)
            with psycopg.connect(cluster.dsn("bench"), autocommit=True) as conn:
                conn.execute(f"DROP TABLE {name}")
            lines.append(
                f"start mark of a {rows:,}-row table: {plain:.2f} s (counts + checksum in one snapshot); "
                f"{with_log:.2f} s with the undo log (replica identity FULL + slot + exported snapshot)"
            )

        # COPY of ROWS/5 rows into a keyed table, without and with the undo log on it
        copy_rows = ROWS // 5
        copies: dict[str, float] = {}
        for label, undo in (("without", False), ("with", True)):
            with psycopg.connect(cluster.dsn("bench"), autocommit=True) as conn:
                conn.execute(DDL.format(name="copied"))
                moment = engine.take_mark("bench_copy", ["public.copied"], undo_log=undo, slot="bench_copy")
                conn.execute("CHECKPOINT")

                def copy(conn: Any = conn) -> None:
                    with conn.cursor().copy("COPY copied FROM STDIN") as out:
                        for i in range(1, copy_rows + 1):
                            out.write_row((i, i % 1000, f"row {i}"))

                copies[label], _ = _timed(copy)
                if moment.undo_log:
                    engine.close_undo_log(moment.undo_log)
                conn.execute("DROP TABLE copied")
        overhead = copies["with"] / copies["without"] - 1
        lines.append(
            f"forward COPY of {copy_rows:,} rows: {copies['without']:.2f} s without the undo log, "
            f"{copies['with']:.2f} s with it ({overhead:+.0%})"
        )

        # the pre-migration backup, then the mark with the undo log, then the changes
        catalog = BackupCatalog(StateStore("bench_state"))
        location = str(root / "logical")
        backup = take_logical_backup(
            engine=engine,
            tables=[TABLE],
            location=location,
            catalog=catalog,
            migration_id="bench",
            kind="pre_migration",
        )
        mark = engine.take_mark("bench_undo", [TABLE], undo_log=True, slot="bench_undo")
        expected = str(mark.tables[TABLE]["checksum"])
        point = archiving.now("bench")
        with psycopg.connect(cluster.dsn("bench"), autocommit=True) as conn:
            changes = _change(conn)

        undo_s, (_, changed, undo_detail) = _timed(
            lambda: engine.apply_undo(mark.undo_log or {}, [UndoTable(TABLE, ("id",))], mark.sequences)
        )
        assert _checksum(engine) == expected, "undo_log did not restore the mark"
        with psycopg.connect(cluster.dsn("bench"), autocommit=True) as conn:
            _change(conn)
        restore_s, _ = _timed(lambda: engine.restore_tables([TABLE], backup.table_stats, opener(backup), []))
        assert _checksum(engine) == expected, "backup_restore did not restore the mark"
        with psycopg.connect(cluster.dsn("bench"), autocommit=True) as conn:
            _change(conn)
        settings = PointInTimeSettings.model_validate(
            {"postgres": archiving.settings(recovery_timeout_seconds=900)}
        )
        target = RecoveryTarget(time=point)

        def pitr() -> None:
            recovery = PostgresWalRecovery(engine, settings)
            recovery.restore(recovery.assess([TABLE], target, whole_database=False), target)

        pitr_s, _ = _timed(pitr)
        assert _checksum(engine) == expected, "point_in_time did not restore the mark"
        engine.close_undo_log(mark.undo_log or {})

        faster = min(restore_s, pitr_s)
        lines += [
            f"{ROWS:,}-row table ({size}) that held its rows before; {changes:,} changes after the mark "
            f"({ROWS // 100:,} inserts, {ROWS // 500:,} updates, {ROWS // 1000:,} deletes):",
            f"  undo_log        {undo_s:7.2f} s  (rows changed back: {sum(changed.values()):,})",
            "                  of which "
            + ", ".join(f"{phase} {took:.2f} s" for phase, took in undo_detail["seconds"].items())
            + " (the inverse statements alone are the floor of any undo of these changes)",
            f"  backup_restore  {restore_s:7.2f} s",
            f"  point_in_time   {pitr_s:7.2f} s  (table level: scratch cluster + copy back)",
            "  faster of the two / undo_log: "
            + goals.check(
                "undo_log",
                "faster of backup_restore, point_in_time / undo_log",
                faster / undo_s,
                ">=",
                UNDO_GOAL_RATIO,
            ),
            f"  undo_log for {changes:,} changes: "
            + goals.check(
                "undo_log", f"undo_log seconds for {changes:,} changes", undo_s, "<=", UNDO_GOAL_SECONDS, "s"
            ),
        ]
    finally:
        cluster.destroy()
        shutil.rmtree(root, ignore_errors=True)
    return lines
