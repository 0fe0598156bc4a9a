"""DAG file parse time: each sensei DAG file beside an empty DAG file, parsed the same way.

Each file is parsed in a fresh interpreter that has already imported Airflow (as the dag
processor has), ``repeat`` times; the median is reported.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EMPTY_DAG = """
from datetime import datetime
from airflow.sdk import DAG
from airflow.providers.standard.operators.empty import EmptyOperator

with DAG("empty_baseline", schedule=None, start_date=datetime(2026, 1, 1)) as dag:
    EmptyOperator(task_id="nothing")
"""
PROBE = """
import json, sys, time
import airflow.sdk  # what the dag processor has loaded already
from airflow.dag_processing.dagbag import DagBag
path = sys.argv[1]
started = time.perf_counter()
bag = DagBag(dag_folder=path)
elapsed = time.perf_counter() - started
print(json.dumps({"seconds": elapsed, "errors": len(bag.import_errors), "dags": len(bag.dags)}))
"""


def _parse(path: Path, env: dict[str, str]) -> dict[str, float]:
    out = (
        subprocess.run(
            [sys.executable, "-c", PROBE, str(path)], capture_output=True, text=True, env=env, check=True
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    return json.loads(out)


def run(repeat: int = 5) -> list[str]:
    home = Path(tempfile.mkdtemp(prefix="sensei-bench-"))
    migrations = home / "migrations"
    migrations.mkdir()
    from sensei_airflow.demo import shop

    (migrations / "mig_shop_2026.yaml").write_text(shop.manifest_yaml())
    empty = home / "empty_dag.py"
    empty.write_text(EMPTY_DAG)
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "SENSEI_MIGRATIONS_DIR": str(migrations),
    }
    files = [empty, *sorted((REPO / "dags").glob("*.py"))]
    baseline = None
    lines = [f"parse time, median of {repeat} fresh interpreters with airflow.sdk already imported:"]
    for path in files:
        results = [_parse(path, env) for _ in range(repeat)]
        median = statistics.median(r["seconds"] for r in results)
        baseline = baseline or median
        errors = results[0]["errors"]
        lines.append(
            f"  {path.name:32s} {median * 1000:8.1f} ms  ({median / baseline:5.2f}x empty DAG)"
            + (f"  IMPORT ERRORS: {errors}" if errors else "")
        )
    return lines
