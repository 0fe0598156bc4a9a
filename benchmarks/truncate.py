"""What the truncate strategy costs as tables grow: the engine's lock, count and empty, in one transaction.

``SENSEI_BENCH_ROWS`` rows (default 1M) in the shop's three keyed tables with foreign keys
(customers 10%, orders 30%, order items 60%); the strategy's own ``empty_tables`` (``LOCK ...
ACCESS EXCLUSIVE``, a ``count(*)`` per table for the audit, one ``TRUNCATE`` of all) is timed,
median of ``SENSEI_BENCH_REPEAT`` (default 3) fills. No goal: the figures feed docs/scaling.md.
"""

from __future__ import annotations

import os
import statistics
import time

import psycopg

from sensei_airflow.local_postgres import LocalCluster, free_port, new_cluster_dir

ROWS = int(os.environ.get("SENSEI_BENCH_ROWS", "1000000"))
REPEAT = int(os.environ.get("SENSEI_BENCH_REPEAT", "3"))
TABLES = ["crm.customers", "sales.orders", "sales.order_items"]
DDL = """
CREATE SCHEMA crm; CREATE SCHEMA sales;
CREATE TABLE crm.customers (id bigint PRIMARY KEY, name text NOT NULL);
CREATE TABLE sales.orders (id bigint PRIMARY KEY, customer_id bigint NOT NULL REFERENCES crm.customers (id),
    total numeric(12, 2) NOT NULL);
CREATE TABLE sales.order_items (order_id bigint NOT NULL REFERENCES sales.orders (id), line_no integer NOT NULL,
    product text NOT NULL, PRIMARY KEY (order_id, line_no));
"""
FILL = (
    "INSERT INTO crm.customers SELECT g, 'Customer ' || g FROM generate_series(1, %(customers)s) g",
    "INSERT INTO sales.orders SELECT g, 1 + g %% %(customers)s, (g %% 100000) / 100.0 "
    "FROM generate_series(1, %(orders)s) g",
    "INSERT INTO sales.order_items SELECT 1 + (g - 1) / 2, 1 + (g - 1) %% 2, 'item ' || g "
    "FROM generate_series(1, %(items)s) g",
)


def run() -> list[str]:
    from sensei_airflow.engines.postgres import PostgresEngine

    sizes = {"customers": ROWS // 10, "orders": ROWS * 3 // 10, "items": ROWS * 6 // 10}
    cluster = LocalCluster(new_cluster_dir("sensei-bench-"), free_port())
    try:
        cluster.start()
        os.environ["AIRFLOW_CONN_BENCH_TRUNCATE"] = cluster.create_database("bench")
        with psycopg.connect(cluster.dsn("bench"), autocommit=True) as conn:
            conn.execute(DDL)
        engine = PostgresEngine("bench_truncate")
        times = []
        for _ in range(REPEAT):
            with psycopg.connect(cluster.dsn("bench"), autocommit=True) as conn:
                for statement in FILL:
                    conn.execute(statement, sizes)
                conn.execute("CHECKPOINT")
            started = time.perf_counter()
            _, removed = engine.empty_tables(list(reversed(TABLES)), [])
            times.append(time.perf_counter() - started)
            assert sum(removed.values()) == ROWS, removed
        median = statistics.median(times)
        return [
            f"truncate strategy (lock, count for the audit, one TRUNCATE) of {ROWS:,} rows in 3 keyed tables, "
            f"median of {REPEAT}: {median:.2f} s (runs: {', '.join(f'{t:.2f}' for t in times)})"
        ]
    finally:
        cluster.destroy()


if __name__ == "__main__":
    print("\n".join(run()))
