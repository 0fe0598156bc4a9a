"""Fixtures for the non-PostgreSQL engines.

- Snowflake: fakesnow (DuckDB underneath) patched into the connector the ``SnowflakeHook`` uses.
- BigQuery: bqemulator, run as a server from its own virtualenv (its pins of duckdb and sqlglot
  conflict with fakesnow's), built from ``requirements/bqemulator.txt`` on first use; the DuckDB
  spatial extension it loads is copied from its wheel into ``~/.duckdb`` (it would otherwise
  try to download it).
- Oracle and SQL Server: no server can run here; :class:`RecordingHook` stands in for the
  provider hook, answers catalog queries with rows the test states and records every call.
  What it answers is never computed from the SQL it was sent: a test that needs answers that
  change during a run (row counts before and after) states them in order as a :class:`Reply`
  script, and every scripted statement must be exactly the one the script expects.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from sensei_airflow.local_postgres import free_port

REPO = Path(__file__).resolve().parents[3]


# -- recording fake hook (Oracle, SQL Server) ------------------------------------------------
Answer = list[tuple[Any, ...]] | Callable[[str, tuple[Any, ...]], list[tuple[Any, ...]]]


def one_line(sql: str) -> str:
    """A statement with its whitespace runs made single spaces (how scripts and tests write it)."""
    return " ".join(sql.split())


@dataclass(frozen=True)
class Reply:
    """One scripted answer: the statement expected next (as :func:`one_line` writes it), its bind
    values, and the rows a server would return."""

    sql: str
    params: tuple[Any, ...]
    rows: list[tuple[Any, ...]]


class ScriptError(AssertionError):
    """A scripted statement came out of order, differed from the script, or the script ran out."""


@dataclass
class RecordingHook:
    """A provider hook's DB-API surface: every call is recorded, queries answered by pattern.

    ``answers`` maps a regular expression (searched in the SQL) to rows, or to a function of
    (sql, params) returning rows; the first match wins, unmatched statements return no rows.
    ``fail`` maps a pattern to an exception raised when a matching statement runs.
    ``columns`` maps a pattern to the column names a matching query's cursor describes, and
    ``rowcounts`` a pattern to the row count a matching statement reports (else -1, as DB-API
    drivers say "unknown").
    Statements matching ``scripted`` are answered from ``script`` instead, one :class:`Reply`
    each, in order; a statement that is not the expected one raises :class:`ScriptError` (also
    kept in ``script_errors``, since the engine's caller may turn it into a failed task).
    """

    answers: dict[str, Answer] = field(default_factory=dict)
    fail: dict[str, Exception] = field(default_factory=dict)
    columns: dict[str, list[str]] = field(default_factory=dict)
    rowcounts: dict[str, int] = field(default_factory=dict)
    calls: list[tuple[Any, ...]] = field(default_factory=list)
    scripted: str | None = None
    script: list[Reply] = field(default_factory=list)
    script_errors: list[str] = field(default_factory=list)

    def get_conn(self) -> FakeConnection:
        self.calls.append(("connect",))
        return FakeConnection(self)

    def get_connection(self, conn_id: str) -> Any:
        """The Airflow connection itself (as the provider hook reads it)."""
        from airflow.sdk import BaseHook

        return BaseHook.get_connection(conn_id)

    def set_autocommit(self, conn: Any, autocommit: bool) -> None:
        self.calls.append(("autocommit", autocommit))

    def answer(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        for pattern, exc in self.fail.items():
            if re.search(pattern, sql):
                raise exc
        if self.scripted is not None and re.search(self.scripted, sql):
            return self._scripted(sql, params)
        for pattern, rows in self.answers.items():
            if re.search(pattern, sql):
                return rows(sql, params) if callable(rows) else list(rows)
        return []

    def _scripted(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        got = (one_line(sql), params)
        if not self.script:
            problem = f"the script has no answer left for {got}"
        else:
            reply = self.script.pop(0)
            if got == (reply.sql, reply.params):
                return list(reply.rows)
            problem = f"the script expected {(reply.sql, reply.params)} but got {got}"
        self.script_errors.append(problem)
        raise ScriptError(problem)

    # what the tests read
    @property
    def executed(self) -> list[tuple[str, tuple[Any, ...]]]:
        return [(c[1], c[2]) for c in self.calls if c[0] == "execute"]

    def sql(self, pattern: str = "") -> list[str]:
        return [s for s, _ in self.executed if re.search(pattern, s)]

    def events(self) -> list[str]:
        """Each call as one short string: ``execute <first words>``, ``commit``, ``rollback``, ..."""
        out = []
        for call in self.calls:
            if call[0] == "execute":
                out.append("execute " + " ".join(call[1].split()[:3]))
            else:
                out.append(" ".join(str(c) for c in call))
        return out


class FakeConnection:
    def __init__(self, hook: RecordingHook) -> None:
        self.hook = hook

    def cursor(self) -> FakeCursor:
        return FakeCursor(self.hook)

    def commit(self) -> None:
        self.hook.calls.append(("commit",))

    def rollback(self) -> None:
        self.hook.calls.append(("rollback",))

    def close(self) -> None:
        self.hook.calls.append(("close",))


class FakeCursor:
    def __init__(self, hook: RecordingHook) -> None:
        self.hook = hook
        self.rows: list[tuple[Any, ...]] = []
        self.description: list[tuple[str, ...]] | None = None
        self.rowcount = -1

    def execute(self, sql: str, params: Any = None) -> None:
        bound = tuple(params) if params is not None else ()
        self.hook.calls.append(("execute", sql, bound))
        self.rows = self.hook.answer(sql, bound)
        names = next((c for p, c in self.hook.columns.items() if re.search(p, sql)), None)
        self.description = None if names is None else [(n,) for n in names]
        self.rowcount = next((n for p, n in self.hook.rowcounts.items() if re.search(p, sql)), -1)

    def fetchall(self) -> list[tuple[Any, ...]]:
        return self.rows

    def close(self) -> None:
        pass


def with_hook(engine: Any, hook: RecordingHook) -> Any:
    """Give ``engine`` the recording hook in place of its provider hook."""
    engine.__dict__["hook"] = hook
    return engine


# -- Snowflake: fakesnow -----------------------------------------------------------------------
@dataclass
class FakeSnowflake:
    conn_id: str
    database: str

    def run(self, *statements: str) -> list[list[tuple[Any, ...]]]:
        """Run statements on the fake account through the provider's hook; the rows of each."""
        from airflow.providers.snowflake.hooks.snowflake import SnowflakeHook

        results = []
        conn = SnowflakeHook(snowflake_conn_id=self.conn_id).get_conn()
        try:
            cur = conn.cursor()
            for statement in statements:
                cur.execute(statement)
                results.append([tuple(r) for r in cur.fetchall()])
        finally:
            conn.close()
        return results

    def scalar(self, sql: str) -> Any:
        return self.run(sql)[0][0][0]


@pytest.fixture
def fake_snowflake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeSnowflake]:
    """A Snowflake connection ``snow_target`` served by fakesnow (files under tmp_path, so every
    connection of the test, also from Airflow tasks, sees the same account)."""
    import fakesnow

    conn = {
        "conn_type": "snowflake",
        "login": "sensei",
        "password": "unused",
        "schema": "CRM",
        "extra": {"account": "sensei-test", "database": "SHOP", "warehouse": "WH"},
    }
    monkeypatch.setenv("AIRFLOW_CONN_SNOW_TARGET", json.dumps(conn))
    (tmp_path / "fakesnow").mkdir()
    with fakesnow.patch(db_path=tmp_path / "fakesnow"):
        yield FakeSnowflake("snow_target", "SHOP")


# -- BigQuery: bqemulator --------------------------------------------------------------------
BQ_VENV = Path(
    os.environ.get("SENSEI_BQEMULATOR_VENV", Path.home() / ".cache" / "sensei-airflow" / "bqemulator")
)
BQ_LOCK = REPO / "requirements" / "bqemulator.txt"
DUCKDB_VERSION = "v1.5.5"


def _bq_python() -> Path:
    """The emulator's interpreter: its own virtualenv, (re)built when the lock file changed.

    Test sessions running side by side share the virtualenv: building it holds a file lock.
    """
    import fcntl

    BQ_VENV.parent.mkdir(parents=True, exist_ok=True)
    with (BQ_VENV.parent / f"{BQ_VENV.name}.lock").open("w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            return _build_bq_venv()
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def _build_bq_venv() -> Path:
    python = BQ_VENV / "bin" / "python"
    stamp = BQ_VENV / ".lock-copy"
    lock = BQ_LOCK.read_text()
    if python.exists() and stamp.exists() and stamp.read_text() == lock:
        return python
    uv = shutil.which("uv") or str(Path(sys.executable).parent / "uv")
    if not Path(uv).exists() and not shutil.which(uv):
        pytest.fail("bqemulator needs `uv` to build its virtualenv: pip install uv", pytrace=False)
    shutil.rmtree(BQ_VENV, ignore_errors=True)
    steps = [
        [uv, "venv", "-q", "--python", f"{sys.version_info.major}.{sys.version_info.minor}", str(BQ_VENV)],
        [uv, "pip", "install", "-q", "--compile-bytecode", "-r", str(BQ_LOCK)],
    ]
    for step in steps:
        done = subprocess.run(
            step, env={**os.environ, "VIRTUAL_ENV": str(BQ_VENV)}, capture_output=True, text=True
        )
        if done.returncode != 0:
            pytest.fail(
                f"building the bqemulator virtualenv failed: {' '.join(step)}\n{done.stderr}", pytrace=False
            )
    stamp.write_text(lock)
    return python


def _install_spatial_extension(python: Path) -> None:
    """Copy duckdb's spatial extension from its wheel to where duckdb looks (no download here)."""
    found = list(
        (BQ_VENV / "lib").glob(
            f"python3*/site-packages/duckdb_extension_spatial/extensions/{DUCKDB_VERSION}/*"
        )
    )
    if not found:
        pytest.fail("duckdb-extension-spatial is missing from the bqemulator virtualenv", pytrace=False)
    target = Path.home() / ".duckdb" / "extensions" / DUCKDB_VERSION / "linux_amd64"
    target.mkdir(parents=True, exist_ok=True)
    for extension in found:
        if not (target / extension.name).exists():
            shutil.copy2(extension, target / extension.name)


@dataclass
class BigQueryEmulator:
    endpoint: str
    project: str

    def client(self) -> Any:
        from google.api_core.client_options import ClientOptions
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import bigquery

        return bigquery.Client(
            project=self.project,
            credentials=AnonymousCredentials(),
            client_options=ClientOptions(api_endpoint=self.endpoint),
        )


@pytest.fixture(scope="session")
def bq_emulator() -> Iterator[BigQueryEmulator]:
    """A bqemulator server for the session (REST on a free port), stopped at the end."""
    python = _bq_python()
    _install_spatial_extension(python)
    port, grpc_port = free_port(), free_port()
    log = Path(tempfile.mkdtemp(prefix="sensei-bqemulator-")) / "emulator.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [str(python), "-m", "bqemulator", "start", "--rest-port", str(port), "--grpc-port", str(grpc_port),
             "--project", "sensei-test", "--log-level", "warning"],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/bigquery/v2/projects/sensei-test/datasets", timeout=2)
                break
            except Exception:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"bqemulator did not start:\n{log.read_text()[-3000:]}", pytrace=False)
                time.sleep(0.3)
        yield BigQueryEmulator(endpoint, "sensei-test")
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        shutil.rmtree(log.parent, ignore_errors=True)


@pytest.fixture
def bigquery_conn(bq_emulator: BigQueryEmulator, monkeypatch: pytest.MonkeyPatch) -> str:
    """A google_cloud_platform connection ``bq_target`` whose BigQueryHook talks to the emulator."""
    from airflow.providers.google.cloud.hooks.bigquery import BigQueryHook
    from google.api_core.client_options import ClientOptions

    conn = {
        "conn_type": "google_cloud_platform",
        "extra": {"project": bq_emulator.project, "is_anonymous": True},
    }
    monkeypatch.setenv("AIRFLOW_CONN_BQ_TARGET", json.dumps(conn))
    monkeypatch.setattr(
        BigQueryHook, "get_client_options", lambda self, api_endpoint_override=None: ClientOptions(
            api_endpoint=bq_emulator.endpoint
        ),
    )  # fmt: skip
    return "bq_target"
