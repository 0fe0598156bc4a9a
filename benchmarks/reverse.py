"""Reverse migration throughput and memory, against the paths a user would take instead.

One PostgreSQL cluster, two databases (``target`` holds the migrated demo shop, ``source`` its
pre-migration schema), ``SENSEI_BENCH_ROWS`` rows in all (default 1M: customers 10%, orders
30%, order items 60%), with the demo's transforms (a rename, ``balance_cents`` -> ``balance``).
Each method fills the emptied source tables from the target, in the same run on the same data:

* this reverse migration (``ReverseMigrationStrategy.execute``: staging, checkpoints, one apply);
* Airflow's ``GenericTransfer`` (common-sql provider) with the inverse in its ``sql``;
* a raw ``psql \\copy (SELECT ...) TO STDOUT | psql \\copy ... FROM STDIN``, binary (the limit).

Then the case only the reverse migration can do: the source back at its pre-migration
content, the target with 1% of its rows changed since. Finally full verification (counts,
checksums, sample) against one ``SELECT sum(hashtext(t::text))`` scan of each side.

Each method runs in its own process; peak memory is that process's maximum RSS, and the
increase over the RSS it had before moving data. ``synchronize_seqscans`` is off so a scan
never starts where the previous one stopped (ENVIRONMENT.md).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import goals

REPO = Path(__file__).resolve().parents[1]
TABLES = [
    ("crm.customers", "public.customers"),
    ("sales.orders", "public.orders"),
    ("sales.order_items", "public.order_items"),
]
INVERSE_SELECT = {
    "public.customers": "SELECT id::integer, name, email_address, (balance_cents / 100.0)::numeric(12,2), "
    "created_at FROM crm.customers",
    "public.orders": "SELECT id::integer, customer_id::integer, status, total, ordered_at FROM sales.orders",
    "public.order_items": "SELECT order_id::integer, line_no, product, qty, price FROM sales.order_items",
}
SOURCE_COLUMNS = {
    "public.customers": "id, name, email, balance, created_at",
    "public.orders": "id, customer_id, status, total, ordered_at",
    "public.order_items": "order_id, line_no, product, qty, price",
}

FILL_TARGET = """
INSERT INTO crm.customers (id, name, email_address, balance_cents, created_at)
SELECT g, 'Customer ' || g, 'customer' || g || '@example.com', (g::bigint * 7919) %% 500000,
       timestamptz '2025-01-01' + g * interval '1 minute'
FROM generate_series(1, %(customers)s) g;
INSERT INTO sales.orders (id, customer_id, status, total, ordered_at)
SELECT g, 1 + (g - 1) / 3, (ARRAY['new','paid','shipped','delivered','returned'])[1 + g %% 5],
       ((g * 31) %% 100000) / 100.0, timestamptz '2025-06-01' + g * interval '1 second'
FROM generate_series(1, %(orders)s) g;
INSERT INTO sales.order_items (order_id, line_no, product, qty, price)
SELECT 1 + (g - 1) / 2, 1 + (g - 1) %% 2,
       (ARRAY['keyboard','mouse','monitor','cable','dock','headset','webcam','lamp'])[1 + g %% 8],
       1 + g %% 4, ((g * 17) %% 50000) / 100.0
FROM generate_series(1, %(items)s) g;
"""

#: the process's own peak RSS. Not ``ru_maxrss``: Linux keeps that across ``execve``, so a child
#: started by a large parent would report the parent's size as its own (and any growth as none).
HIGH_WATER = """
import resource
def high_water_kb():
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
"""

OURS = (
    HIGH_WATER
    + """
import json, sys, time
from datetime import UTC, datetime
from sensei_airflow.manifest import load_manifests, Strategy
from sensei_airflow.plan import PlannedTable, RollbackPlan
from sensei_airflow.state import StateStore
from sensei_airflow.strategies.reverse import ReverseMigrationStrategy
manifest = load_manifests().get("mig_shop_2026")
plan = RollbackPlan(migration_id=manifest.id, rollback_id=sys.argv[1], strategy=Strategy.REVERSE_MIGRATION,
    requested_strategy="reverse_migration", scope={"scope": "all"},
    tables=[PlannedTable(target=t.target, source=t.source, phase=1) for t in manifest.tables],
    started_at=datetime.now(UTC).isoformat())
strategy = ReverseMigrationStrategy(manifest, StateStore(manifest.state.conn_id))
strategy.source.identity(); strategy.target.identity()
before = high_water_kb()
started = time.perf_counter()
result = strategy.verify(plan) if sys.argv[2] == "verify" else strategy.execute(plan)
elapsed = time.perf_counter() - started
peak = high_water_kb()
ok = result.passed if sys.argv[2] == "verify" else True
print(json.dumps({"seconds": elapsed, "peak_kb": peak, "before_kb": before, "ok": ok}))
"""
)

GENERIC = (
    HIGH_WATER
    + """
import json, sys, time
from airflow.providers.common.sql.operators.generic_transfer import GenericTransfer
from airflow.providers.postgres.hooks.postgres import PostgresHook
specs = json.loads(sys.argv[1])
PostgresHook(postgres_conn_id="shop_source").get_conn().close()
before = high_water_kb()
started = time.perf_counter()
for source, sql in specs:
    GenericTransfer(task_id="t_" + source.replace(".", "_"), sql=sql, destination_table=source,
                    source_conn_id="shop_target", destination_conn_id="shop_source").execute({})
elapsed = time.perf_counter() - started
print(json.dumps({"seconds": elapsed, "peak_kb": high_water_kb(), "before_kb": before, "ok": True}))
"""
)


def _env(cluster: Any, dbs: dict[str, str], migrations: Path) -> dict[str, str]:
    env = dict(os.environ)
    home = Path(tempfile.mkdtemp(prefix="sensei-bench-airflow-"))
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "SENSEI_MIGRATIONS_DIR": str(migrations),
            "AIRFLOW_CONN_SHOP_SOURCE": cluster.uri(dbs["source"]),
            "AIRFLOW_CONN_SHOP_TARGET": cluster.uri(dbs["target"]),
            "AIRFLOW_CONN_SENSEI_STATE": cluster.uri(dbs["state"]),
            "PYTHONPATH": str(REPO),
        }
    )
    return env


def _python(code: str, args: list[str], env: dict[str, str]) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, cwd=REPO, capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


PIPE = """
import json, resource, subprocess, sys, time
specs = json.loads(sys.argv[1])
started = time.perf_counter()
for target_dsn, select, source_dsn, destination in specs:
    reader = subprocess.Popen(["psql", "-X", "-q", "-d", target_dsn, "-c",
                               f"\\\\copy ({select}) TO STDOUT (FORMAT binary)"], stdout=subprocess.PIPE)
    writer = subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", source_dsn, "-c",
                             f"\\\\copy {destination} FROM STDIN (FORMAT binary)"],
                            stdin=reader.stdout, capture_output=True, text=True, check=False)
    reader.stdout.close()
    if reader.wait() or writer.returncode:
        sys.exit(writer.stderr)
elapsed = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"seconds": elapsed, "peak_kb": peak, "before_kb": 0, "ok": True}))
"""


def _psql_pipe(cluster: Any, dbs: dict[str, str], env: dict[str, str]) -> dict[str, Any]:
    """The pipe, run from a small process so that its peak memory is the psql processes' own."""
    specs = [
        [
            cluster.dsn(dbs["target"]),
            INVERSE_SELECT[source],
            cluster.dsn(dbs["source"]),
            f"{source} ({SOURCE_COLUMNS[source]})",
        ]
        for _, source in TABLES
    ]
    return _python(PIPE, [json.dumps(specs)], env)


def _sql(cluster: Any, db: str, sql: str, params: dict[str, Any] | None = None) -> Any:
    import psycopg

    with psycopg.connect(cluster.dsn(db), autocommit=True) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else None


def _empty_source(cluster: Any, dbs: dict[str, str]) -> None:
    _sql(cluster, dbs["source"], "TRUNCATE public.order_items, public.orders, public.customers")
    _sql(cluster, dbs["source"], "DROP SCHEMA IF EXISTS sensei_staging CASCADE")
    _sql(cluster, dbs["source"], "CHECKPOINT")


def _source_matches(cluster: Any, dbs: dict[str, str]) -> bool:
    for _, source in TABLES:
        mine = f"SELECT {SOURCE_COLUMNS[source]} FROM {source}"  # noqa: S608
        a = _sql(cluster, dbs["source"], f"SELECT count(*), sum(hashtext(t::text)) FROM ({mine}) t")  # noqa: S608
        theirs = INVERSE_SELECT[source]
        b = _sql(cluster, dbs["target"], f"SELECT count(*), sum(hashtext(t::text)) FROM ({theirs}) t")  # noqa: S608
        if a != b:
            return False
    return True


def _rate(rows: int, result: dict[str, Any]) -> str:
    if "error" in result:
        return f"FAILED: {result['error']}"
    mb = result["peak_kb"] / 1024
    grew = (result["peak_kb"] - result["before_kb"]) / 1024
    return f"{rows / result['seconds']:>10,.0f} rows/s  {result['seconds']:6.2f} s  peak {mb:6.0f} MB (+{grew:.0f} MB moving)"


def run() -> list[str]:
    from sensei_airflow.demo import shop
    from sensei_airflow.demo.migration import prepare_target
    from sensei_airflow.engines.postgres import PostgresEngine
    from sensei_airflow.local_postgres import LocalCluster, free_port, new_cluster_dir

    rows = int(os.environ.get("SENSEI_BENCH_ROWS", "1000000"))
    customers, orders = rows // 10, rows * 3 // 10
    items = rows - customers - orders
    cluster = LocalCluster(
        new_cluster_dir("sensei-bench-"), free_port(), settings={"synchronize_seqscans": "off"}
    )
    migrations = Path(tempfile.mkdtemp(prefix="sensei-bench-migrations-"))
    lines = [
        f"reverse migration, {rows:,} rows (customers {customers:,}, orders {orders:,}, items {items:,})"
    ]
    try:
        cluster.start()
        dbs = {role: f"bench_{role}" for role in ("source", "target", "state")}
        for name in dbs.values():
            cluster.create_database(name)
        env = _env(cluster, dbs, migrations)
        (migrations / "mig_shop_2026.yaml").write_text(shop.manifest_yaml())
        _sql(cluster, dbs["source"], shop.SOURCE_DDL)
        os.environ.update({k: v for k, v in env.items() if k.startswith("AIRFLOW_CONN_")})
        prepare_target(PostgresEngine("shop_target"))
        for statement in filter(str.strip, FILL_TARGET.split(";")):
            _sql(
                cluster, dbs["target"], statement, {"customers": customers, "orders": orders, "items": items}
            )
        _sql(cluster, dbs["target"], "VACUUM ANALYZE")

        results: dict[str, list[dict[str, Any]]] = {"pipe": [], "ours": [], "generic": []}
        for attempt in range(2):
            _empty_source(cluster, dbs)
            results["pipe"].append(_psql_pipe(cluster, dbs, env))
            _empty_source(cluster, dbs)
            results["ours"].append(_python(OURS, [f"bench_{attempt}", "execute"], env))
            if attempt == 0:
                ours_ok = _source_matches(cluster, dbs)
        _empty_source(cluster, dbs)
        specs = [[source, INVERSE_SELECT[source]] for _, source in TABLES]
        results["generic"].append(_python(GENERIC, [json.dumps(specs)], env))

        def best(name: str) -> dict[str, Any]:
            ok = [r for r in results[name] if "error" not in r]
            if not ok:
                return results[name][0]
            return sorted(ok, key=lambda r: r["seconds"])[len(ok) // 2 if len(ok) > 2 else 0]

        pipe, ours, generic = best("pipe"), best("ours"), best("generic")
        lines.append("into the emptied source tables (best of 2; GenericTransfer once):")
        lines.append(f"  psql COPY pipe      {_rate(rows, pipe)}")
        lines.append(f"  reverse migration   {_rate(rows, ours)}  (source == inverse(target): {ours_ok})")
        lines.append(f"  GenericTransfer     {_rate(rows, generic)}")
        if "error" not in ours and "error" not in pipe:
            lines.append(
                "  reverse / pipe      "
                + goals.check(
                    "reverse",
                    "reverse / psql binary COPY pipe (rate)",
                    pipe["seconds"] / ours["seconds"],
                    ">=",
                    1.0,
                )
            )
        else:
            lines.append(
                "  reverse / pipe      "
                + goals.missing("reverse", "reverse / pipe", ">=", 1.0, "a run failed")
            )
        if "error" not in ours and "error" not in generic:
            lines.append(
                "  reverse / Generic   "
                + goals.check(
                    "reverse",
                    "reverse / GenericTransfer (rate)",
                    generic["seconds"] / ours["seconds"],
                    ">=",
                    10,
                )
            )
        else:
            lines.append(
                "  reverse / Generic   "
                + goals.missing("reverse", "reverse / GenericTransfer", ">=", 10, "a run failed")
            )
        if "error" not in ours:
            grew = (ours["peak_kb"] - ours["before_kb"]) / 1024
            lines.append(
                "  memory while moving "
                + goals.check("reverse", f"memory above baseline at {rows:,} rows", grew, "<", 50, " MB")
            )

        # the realistic case: the source at its pre-migration content; since the cutover the
        # application changed 1% of the rows on the target: its newest rows (updates and inserts)
        _empty_source(cluster, dbs)
        _python(OURS, ["bench_fill", "execute"], env)
        recent = max(1, items // 100)
        bounds = {
            "items_after": orders - recent // 2,
            "orders_after": orders - recent // 4,
            "copied": recent // 4,
            "offset": orders,
        }
        for statement in (
            "UPDATE sales.order_items SET qty = qty + 1 WHERE order_id > %(items_after)s",
            "UPDATE sales.orders SET status = 'paid' WHERE id > %(orders_after)s",
            "INSERT INTO sales.orders SELECT id + %(offset)s, customer_id, status, total, ordered_at "
            "FROM sales.orders WHERE id <= %(copied)s",
        ):
            _sql(cluster, dbs["target"], statement, bounds)
        changed = _python(OURS, ["bench_changed", "execute"], env)
        lines.append(
            "source at its pre-migration content, the target's newest ~1% of rows changed or added since:"
        )
        lines.append(
            f"  reverse migration   {_rate(rows, changed)}  (key ranges that agree are compared, not moved)"
        )

        # verification against one hash scan of each side
        scan = 0.0
        for _, source in TABLES:
            for db, table in (
                (dbs["source"], source),
                (dbs["target"], dict((s, t) for t, s in TABLES)[source]),
            ):
                started = time.perf_counter()
                _sql(cluster, db, f"SELECT sum(hashtext(t::text)) FROM {table} t")  # noqa: S608
                scan += time.perf_counter() - started
        verify = _python(OURS, ["bench_changed", "verify"], env)
        if "error" in verify:
            lines.append(f"verification FAILED: {verify['error']}")
        else:
            lines.append(
                f"full verification (counts, checksums, sample) {verify['seconds']:.2f} s, passed={verify['ok']}; "
                f"one hash scan of each side {scan:.2f} s; ratio "
                + goals.check(
                    "reverse",
                    "full verification / one hash scan of each side",
                    verify["seconds"] / scan,
                    "<=",
                    2,
                )
            )
    finally:
        cluster.destroy()
        shutil.rmtree(migrations, ignore_errors=True)
    return lines


if __name__ == "__main__":
    print("\n".join(run()))
