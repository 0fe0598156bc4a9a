"""psql, pg_dump, pg_restore and pg_basebackup log in with the hook's credentials, through a passfile.

A real cluster whose pg_hba.conf demands a SCRAM-SHA-256 password of everyone but its superuser
over TCP; the engine's Airflow connection names a role whose name, database and password hold
spaces, quotes, a backslash, colons and non-ASCII letters. Every program the engine starts is
watched: the password is never on its command line nor in its environment, only in a passfile
of mode 0600 that is gone once the program is done.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from sensei_airflow.engines.postgres import PostgresEngine
from sensei_airflow.engines.postgres.client import client_login, connection_params, passfile_line
from sensei_airflow.local_postgres import LocalCluster, PostgresUnavailable, free_port, new_cluster_dir

ROLE = "Sensei Backup ü"
PASSWORD = "pa ss \"wörd\" 'quoted' \\back:slash:"
DATABASE = "Shop Data ü"
HBA = (
    "local all all trust\n"
    "host all postgres 127.0.0.1/32 trust\n"
    "host all all 127.0.0.1/32 scram-sha-256\n"
    "host replication all 127.0.0.1/32 scram-sha-256\n"
)


@pytest.fixture(scope="module")
def scram_cluster() -> Iterator[LocalCluster]:
    """A cluster that demands a SCRAM password of every role but postgres over TCP."""
    cluster = LocalCluster(
        new_cluster_dir("sensei-scram-"), free_port(), settings={"password_encryption": "scram-sha-256"}
    )
    try:
        cluster.init()
        (cluster.data_dir / "pg_hba.conf").write_text(HBA, encoding="utf-8")
        cluster.start()
    except PostgresUnavailable as exc:
        shutil.rmtree(cluster.base_dir, ignore_errors=True)
        pytest.fail(f"PostgreSQL is needed and could not start: {exc}", pytrace=False)
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN CREATEDB REPLICATION PASSWORD {}").format(
                sql.Identifier(ROLE), sql.Literal(PASSWORD)
            )
        )
        conn.execute(
            sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(DATABASE), sql.Identifier(ROLE))
        )
    shop = psycopg.connect(
        host="127.0.0.1", port=cluster.port, dbname=DATABASE, user=ROLE, password=PASSWORD, autocommit=True
    )
    with shop:
        shop.execute(
            'CREATE SCHEMA "Sales"; '
            'CREATE TABLE "Sales"."Order Items" (id bigserial PRIMARY KEY, "order" text NOT NULL, "user" text); '
            'INSERT INTO "Sales"."Order Items" ("order", "user") '
            "SELECT 'Bestellung ' || g, CASE WHEN g % 2 = 0 THEN 'zoë' END FROM generate_series(1, 25) g"
        )
    yield cluster
    cluster.destroy()


@pytest.fixture
def engine(scram_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch) -> PostgresEngine:
    """The engine of an Airflow connection (JSON form) that logs in as ROLE with PASSWORD."""
    connection = {
        "conn_type": "postgres",
        "host": "127.0.0.1",
        "port": scram_cluster.port,
        "login": ROLE,
        "password": PASSWORD,
        "schema": DATABASE,
        "extra": {"application_name": "sensei credentials test", "sqlalchemy_scheme": "postgresql"},
    }
    monkeypatch.setenv("AIRFLOW_CONN_SCRAM_SHOP", json.dumps(connection))
    return PostgresEngine("scram_shop")


class Spawned:
    """Every program started while a test runs: its arguments, environment and passfile."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []


@pytest.fixture
def spawned(monkeypatch: pytest.MonkeyPatch) -> Spawned:
    seen = Spawned()
    real = subprocess.Popen

    class Watched(real):  # type: ignore[misc, valid-type]
        def __init__(self, args: Any, *rest: Any, **kwargs: Any) -> None:
            env = kwargs.get("env") or dict(os.environ)
            call: dict[str, Any] = {"args": [str(a) for a in args], "env": dict(env)}
            passfile = env.get("PGPASSFILE")
            if passfile:
                call["passfile"] = passfile
                call["mode"] = stat.S_IMODE(os.stat(passfile).st_mode)
                call["passfile_text"] = Path(passfile).read_text(encoding="utf-8")
            seen.calls.append(call)
            super().__init__(args, *rest, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", Watched)
    return seen


def _programs(seen: Spawned) -> list[dict[str, Any]]:
    return [
        c for c in seen.calls if Path(c["args"][0]).name in {"psql", "pg_dump", "pg_restore", "pg_basebackup"}
    ]


def assert_password_only_in_passfiles(seen: Spawned, names: set[str]) -> None:
    programs = _programs(seen)
    assert {Path(c["args"][0]).name for c in programs} >= names
    for call in programs:
        name = Path(call["args"][0]).name
        assert not any(PASSWORD in arg for arg in call["args"]), (
            f"{name} got the password on its command line"
        )
        assert not any(PASSWORD in value for value in call["env"].values()), (
            f"{name} got it in its environment"
        )
        assert "PGPASSWORD" not in call["env"]
        assert call["mode"] == 0o600, f"{name}'s passfile has mode {oct(call['mode'])}"
        assert call["passfile_text"] == passfile_line(PASSWORD)
        assert not Path(call["passfile"]).exists(), f"{name}'s passfile was left behind"


def test_pg_dump_psql_and_pg_restore_log_in_with_the_hooks_password(engine, spawned, tmp_path):
    table = '"Sales"."Order Items"'
    schema_archive = tmp_path / "schema.dump"
    engine.dump_schema([table], schema_archive)
    data: dict[str, bytes] = {}
    states = engine.dump_tables([table], lambda name, stream: data.__setitem__(name, stream.read()))
    assert states[table].rows == 25

    from contextlib import contextmanager
    from io import BytesIO

    @contextmanager
    def open_data(name: str) -> Iterator[BytesIO]:
        yield BytesIO(data[name])

    restored = engine.restore_test([table], {table: vars(states[table])}, schema_archive, open_data)
    assert (restored[table].rows, restored[table].checksum) == (25, states[table].checksum)
    assert_password_only_in_passfiles(spawned, {"psql", "pg_dump", "pg_restore"})


def test_pg_basebackup_logs_in_with_the_hooks_password(engine, spawned, tmp_path):
    folder = tmp_path / "base"
    files = {p.name for p in engine.base_backup(folder)}
    assert {"base.tar", "pg_wal.tar", "backup_manifest"} <= files
    assert_password_only_in_passfiles(spawned, {"pg_basebackup"})


def test_a_wrong_password_is_refused_by_the_server_not_sent_elsewhere(engine, monkeypatch, tmp_path):
    connection = json.loads(os.environ["AIRFLOW_CONN_SCRAM_SHOP"])
    monkeypatch.setenv("AIRFLOW_CONN_SCRAM_SHOP", json.dumps({**connection, "password": "not it"}))
    with pytest.raises(RuntimeError, match=r"pg_dump --schema-only failed .*password authentication failed"):
        PostgresEngine("scram_shop").dump_schema(['"Sales"."Order Items"'], tmp_path / "schema.dump")


def test_conninfo_holds_the_hooks_extras_and_never_the_password(engine):
    with client_login(engine.hook, dbname="replication") as login:
        params = psycopg.conninfo.conninfo_to_dict(login.conninfo)
        assert params == {
            "host": "127.0.0.1",
            "port": str(engine.hook.connection.port),
            "user": ROLE,
            "dbname": "replication",
            "application_name": "sensei credentials test",
        }
        assert "password" not in login.conninfo and PASSWORD not in login.conninfo
        assert "PGPASSWORD" not in login.env


def test_an_iam_connection_logs_in_with_its_token(monkeypatch):
    """IAM (AWS here) cannot run on this machine: the hook's own token call is replaced, the rest is real."""
    from airflow.providers.postgres.hooks.postgres import PostgresHook
    from airflow.sdk import Connection

    conn = Connection(
        conn_id="rds_iam", conn_type="postgres", host="db.example.internal", port=5432, login="app",
        schema="shop", extra=json.dumps({"iam": True, "aws_conn_id": "aws_x", "sslmode": "require",
                                         "options": "-c statement_timeout=0", "sqlalchemy_scheme": "x"}),
    )  # fmt: skip
    hook = PostgresHook(connection=conn)
    monkeypatch.setattr(hook, "get_iam_token", lambda c: ("iam_user", "token with spaces:and\\colons", 6543))
    assert connection_params(hook) == {
        "host": "db.example.internal",
        "user": "iam_user",
        "password": "token with spaces:and\\colons",
        "dbname": "shop",
        "port": 6543,
        "sslmode": "require",
        "options": "-c statement_timeout=0",
    }
    with client_login(hook) as login:
        assert Path(login.env["PGPASSFILE"]).read_text() == "*:*:*:*:token with spaces\\:and\\\\colons\n"
        assert "token" not in login.conninfo
    assert not Path(login.env["PGPASSFILE"]).exists()


def test_a_password_with_a_line_break_is_refused_in_one_line():
    with pytest.raises(ValueError, match="holds a line break"):
        passfile_line("one\ntwo")
