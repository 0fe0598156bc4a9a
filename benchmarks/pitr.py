"""Table-level point-in-time recovery of a 1M-row table, beside the raw steps it is made of.

One cluster with WAL archiving (fsync off, as in the tests). A base backup is taken while the
database is empty; then ``SENSEI_BENCH_ROWS`` rows (default 1M, ~100 MB with its primary key)
are loaded, the point is marked, and 10% of the rows are changed. Each run restores the table
to the point, alternately by:

* **raw steps**: ``cp -a`` of the base backup, ``recovery.signal`` + ``restore_command`` +
  ``recovery_target_time`` + ``promote``, ``pg_ctl start``, poll ``pg_is_in_recovery()``, then
  ``psql \\copy ... TO STDOUT | psql -1 -c TRUNCATE -c "\\copy ... FROM pstdin"`` (binary),
  stop and remove the copy: what a DBA would type;
* **sensei**: ``PostgresWalRecovery.assess`` + ``restore`` (WAL switch and archive wait, base
  backup choice, checks, scratch cluster, one-transaction copy back with locks and sequences,
  cleanup).

Airflow's own import is not timed (a task has it loaded already). Both restore the same point
into the same live table in the same run; medians of
``SENSEI_BENCH_REPEAT`` (default 3) runs each. Goal: sensei adds less than 25%.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import time
from pathlib import Path

from benchmarks import goals
from sensei_airflow.engines.postgres.client import ToolMissing, find_program
from sensei_airflow.local_postgres import LocalCluster, free_port

ROWS = int(os.environ.get("SENSEI_BENCH_ROWS", "1000000"))
REPEAT = int(os.environ.get("SENSEI_BENCH_REPEAT", "3"))
GOAL = 1.25


def _psql() -> str:
    try:
        return str(find_program("psql"))
    except ToolMissing:
        return "psql"


def raw_restore(archiving: object, point: str, scratch: Path, port: int) -> float:
    """The raw steps, timed: copy the backup, recover to the point, pipe the table back."""
    from sensei_airflow.engines.postgres.basebackup import list_base_backups
    from sensei_airflow.engines.postgres.cluster import chown_to_postgres

    backup = list_base_backups(archiving.backups)[0]  # type: ignore[attr-defined]
    live = archiving.cluster  # type: ignore[attr-defined]
    psql = _psql()
    started = time.perf_counter()
    # close the current WAL segment and wait for it in the archive (without it recovery ends early)
    segment = subprocess.run(
        [psql, "-h", "127.0.0.1", "-p", str(live.port), "-U", "postgres", "-Atc",
         "SELECT pg_walfile_name(pg_switch_wal())"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    while not (archiving.archive / segment).exists():  # type: ignore[attr-defined]
        time.sleep(0.05)
    scratch.mkdir(parents=True)
    os.chmod(scratch, 0o755)
    data = scratch / "data"
    subprocess.run(["cp", "-a", str(backup.path), str(data)], check=True)
    (data / "recovery.signal").touch()
    (data / "pg_hba.conf").write_text("local all all trust\nhost all all 127.0.0.1/32 trust\n")
    chown_to_postgres(scratch)
    cluster = LocalCluster(
        scratch, port,
        settings={"restore_command": f"cp {archiving.archive}/%f %p",  # type: ignore[attr-defined]
                  "recovery_target_time": point, "recovery_target_action": "promote", "archive_mode": "off"},
    )  # fmt: skip
    (scratch / "sock").mkdir(exist_ok=True)
    chown_to_postgres(scratch / "sock")
    cluster.start()
    while (
        subprocess.run(
            [psql, "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-Atc", "SELECT pg_is_in_recovery()"],
            capture_output=True, text=True, check=False,
        ).stdout.strip() != "f"
    ):  # fmt: skip
        if not cluster.is_running():
            raise RuntimeError(f"raw recovery failed: {(scratch / 'server.log').read_text()[-500:]}")
        time.sleep(0.1)
    pipe = (
        f"{psql} -h 127.0.0.1 -p {port} -U postgres -d bench -c '\\copy big TO STDOUT (FORMAT binary)' | "
        f"{psql} -h 127.0.0.1 -p {live.port} -U postgres -d bench -v ON_ERROR_STOP=1 -1 "
        "-c 'TRUNCATE big' -c '\\copy big FROM pstdin (FORMAT binary)'"
    )
    subprocess.run(["bash", "-o", "pipefail", "-c", pipe], check=True, capture_output=True)
    cluster.stop("immediate")
    shutil.rmtree(scratch)
    return time.perf_counter() - started


def sensei_restore(point_time: object) -> tuple[float, dict[str, int]]:
    from sensei_airflow.engines.base import RecoveryTarget
    from sensei_airflow.engines.postgres import PostgresEngine
    from sensei_airflow.engines.postgres.pitr import PostgresWalRecovery
    from sensei_airflow.manifest import PointInTimeSettings

    settings = PointInTimeSettings.model_validate({"postgres": _SETTINGS})
    engine = PostgresEngine("bench_pitr")
    engine.hook  # noqa: B018 - Airflow and the hook are loaded in a task already: not timed
    started = time.perf_counter()
    pitr = PostgresWalRecovery(engine, settings)
    target = RecoveryTarget(time=point_time)  # type: ignore[arg-type]
    plan = pitr.assess(["public.big"], target, whole_database=False)
    outcome = pitr.restore(plan, target)
    return time.perf_counter() - started, outcome.rows_restored


_SETTINGS: dict[str, object] = {}


def run() -> list[str]:
    from tests.integration.pitr.clusters import archiving_cluster

    lines: list[str] = []
    with archiving_cluster("sensei-bench-pitr-") as archiving:
        archiving.base_backup()
        os.environ["AIRFLOW_CONN_BENCH_PITR"] = archiving.cluster.create_database("bench")
        with archiving.connect("bench") as conn:
            conn.execute("ALTER DATABASE bench SET synchronize_seqscans = off")
            conn.execute(
                "CREATE TABLE big (id bigint PRIMARY KEY, n integer NOT NULL, payload text NOT NULL)"
            )
            conn.execute(
                "INSERT INTO big SELECT g, g %% 1000, md5(g::text) || md5((g * 7)::text) "
                "FROM generate_series(1, %s) g",
                (ROWS,),
            )
            size = conn.execute("SELECT pg_size_pretty(pg_total_relation_size('big'))").fetchone()[0]
        point = archiving.now("bench")
        with archiving.connect("bench") as conn:
            conn.execute("UPDATE big SET n = -1 WHERE id % 10 = 0")
            expected = conn.execute("SELECT count(*) FROM big WHERE n = -1").fetchone()[0]
        assert expected == ROWS // 10
        _SETTINGS.update(archiving.settings(recovery_timeout_seconds=600))
        wal = sum(p.stat().st_size for p in archiving.archive.iterdir()) // (1 << 20)
        raw_times, sensei_times = [], []
        point_text = point.isoformat(sep=" ")
        for attempt in range(REPEAT):
            raw_times.append(
                raw_restore(archiving, point_text, archiving.root / f"raw-{attempt}", free_port())
            )
            with archiving.connect("bench") as conn:
                assert conn.execute("SELECT count(*) FROM big WHERE n = -1").fetchone()[0] == 0
                conn.execute("UPDATE big SET n = -1 WHERE id % 10 = 0")
            seconds, restored = sensei_restore(point)
            sensei_times.append(seconds)
            assert restored == {"public.big": ROWS}, restored
            with archiving.connect("bench") as conn:
                assert conn.execute("SELECT count(*) FROM big WHERE n = -1").fetchone()[0] == 0
                conn.execute("UPDATE big SET n = -1 WHERE id % 10 = 0")
        raw, ours = statistics.median(raw_times), statistics.median(sensei_times)
        ratio = ours / raw
        lines += [
            f"table-level PITR of {ROWS:,} rows ({size} with its key), {wal} MB of archived WAL to replay, "
            f"median of {REPEAT}:",
            f"  raw steps (cp base backup, recover + promote, psql binary pipe)  {raw:6.2f} s  "
            f"(runs: {', '.join(f'{t:.2f}' for t in raw_times)})",
            f"  sensei PostgresWalRecovery.assess + restore                      {ours:6.2f} s  "
            f"(runs: {', '.join(f'{t:.2f}' for t in sensei_times)})",
            "  ratio sensei / raw: " + goals.check("pitr", "table-level PITR / raw steps", ratio, "<", GOAL),
        ]
    return lines
