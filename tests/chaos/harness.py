"""Kill -9 a rollback in the middle of a changing step, at a moment the test chooses, then start it again.

The rollback runs in a child process (``dag.test`` of ``sensei_rollback``: every task runs in that
process). The test finds the moment without sleeping: it holds a PostgreSQL lock the step needs
(:class:`Hold`) and waits until ``pg_blocking_pids`` shows one of the step's sessions waiting for it.
It then kills the child, lets the lock go, waits until the killed run has no session left on any
database, and checks what the databases hold.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import psycopg

from tests.fixtures import REPO, Databases

#: the application name of the test's own holds (not sessions of the rollback).
HOLD_NAME = "chaos test hold"
#: generous: the child pays Airflow's start-up and several task starts on a busy machine.
DEADLINE = 300.0
MIG = "mig_shop_2026"


def _forkserver() -> BaseContext:
    """This worker's forkserver, with :mod:`tests.chaos.zygote` imported (started on first use)."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["tests.chaos.zygote"])
    return context


@dataclass
class ChildRollback:
    """A ``sensei_rollback`` run in a child process (forked from :mod:`tests.chaos.zygote`)."""

    process: BaseProcess
    log: Path

    def alive(self) -> bool:
        return self.process.is_alive()

    def kill(self) -> None:
        """``kill -9``: no cleanup code of the run gets to run."""
        assert self.alive(), f"the rollback ended before it could be killed:\n{self.tail()}"
        self.process.kill()
        self.process.join(60)
        assert self.process.exitcode == -signal.SIGKILL, self.process.exitcode

    def finish(self, timeout: float = DEADLINE) -> dict[str, str]:
        """Wait for the run to end; its run id and state."""
        self.process.join(timeout)
        if self.alive():
            self.stop()
            raise AssertionError(f"the rollback did not end within {timeout:.0f} s:\n{self.tail()}")
        for line in reversed(self.log.read_text(errors="replace").splitlines()):
            if line.startswith("SENSEI_RUN "):
                return json.loads(line.removeprefix("SENSEI_RUN "))
        raise AssertionError(f"the rollback process ended without a result:\n{self.tail()}")

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.alive():
            self.process.kill()
            self.process.join(60)


def start_rollback(
    conf: dict[str, Any], *, lock_timeout: str = "10min", env: dict[str, str] | None = None
) -> ChildRollback:
    """Start ``sensei_rollback`` with ``conf`` in a child process, with this test's connections.

    :param lock_timeout: the target engine's lock wait bound in the child (the test's holds last
        longer than the default 30 s on a busy machine).
    """
    from tests.chaos import child

    log = Path(tempfile.mkstemp(prefix="sensei-chaos-", suffix=".log")[1])
    atexit.register(log.unlink, missing_ok=True)  # kept for the failure messages until the session ends
    environ = {**os.environ, **(env or {})}
    process = _forkserver().Process(
        target=child.run_rollback, args=(conf, lock_timeout, environ, str(log), str(REPO)), daemon=True
    )
    process.start()
    return ChildRollback(process, log)


@dataclass
class Hold:
    """An open transaction of the test's own that holds locks some step of the rollback needs."""

    conn: psycopg.Connection[Any]
    released: bool = field(default=False)

    @property
    def pid(self) -> int:
        return self.conn.info.backend_pid

    def blocked(self, alive: Callable[[], bool], what: str, timeout: float = DEADLINE) -> tuple[int, str]:
        """Wait until a session of the rollback waits for this hold; its pid and query."""
        deadline = time.monotonic() + timeout
        with psycopg.connect(self.conn.info.dsn, autocommit=True) as watcher:
            while True:
                row = watcher.execute(
                    "SELECT pid, query FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))",
                    (self.pid,),
                ).fetchone()
                if row:
                    # A statement reads pg_stat_activity once, before pg_blocking_pids runs: the text
                    # can be the session's previous statement. It waits for this hold until the test
                    # lets go, so a second read gives the statement that waits.
                    (query,) = watcher.execute(
                        "SELECT query FROM pg_stat_activity WHERE pid = %s", (row[0],)
                    ).fetchone()
                    return int(row[0]), str(query)
                assert alive(), f"the rollback ended before it reached {what}"
                assert time.monotonic() < deadline, f"the rollback never reached {what}"
                time.sleep(0.02)

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.conn.rollback()
            self.conn.close()


@contextmanager
def hold(dsn: str, *statements: str, params: Sequence[Any] = ()) -> Iterator[Hold]:
    """Run ``statements`` in a transaction that stays open until the block ends (or :meth:`Hold.release`)."""
    conn = psycopg.connect(dsn, application_name=HOLD_NAME)
    for statement in statements:
        conn.execute(statement, params or None)
    held = Hold(conn)
    try:
        yield held
    finally:
        held.release()


def kill_when_blocked(
    dsn: str,
    statements: Sequence[str],
    conf: dict[str, Any],
    what: str,
    *,
    params: Sequence[Any] = (),
    while_blocked: Callable[[str], None] | None = None,
) -> str:
    """Hold ``statements`` open on ``dsn``, start the rollback, and kill -9 it once it waits for the hold.

    :param what: the step the rollback is expected to block in (for the failure message).
    :param while_blocked: called with the blocked query before the kill (checks of what is still open).
    :return: the query the rollback was blocked in.
    """
    with hold(dsn, *statements, params=params) as held:
        child = start_rollback(conf)
        try:
            _, query = held.blocked(child.alive, what)
            if while_blocked is not None:
                while_blocked(query)
            child.kill()
        finally:
            child.stop()
    return query


def sessions_left(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return int(
            conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() "
                "AND application_name <> %s",
                (HOLD_NAME,),
            ).fetchone()[0]
        )


def wait_until_gone(*dsns: str, timeout: float = 120) -> None:
    """Wait until the killed run has no session left on these databases (its transactions rolled back).

    The test's own holds do not count.
    """
    deadline = time.monotonic() + timeout
    for dsn in dsns:
        while sessions_left(dsn):
            assert time.monotonic() < deadline, f"sessions of the killed run are still open on {dsn}"
            time.sleep(0.05)


def dsns(databases: Databases) -> list[str]:
    """Source, target and state of the test's databases."""
    return [databases.cluster.dsn(getattr(databases, side)) for side in ("source", "target", "state")]


def rows(databases: Databases, which: str, tables: Sequence[str]) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of each table, sorted: the row-for-row picture of a side."""
    with databases.connect(which) as conn:
        return {t: sorted(conn.execute(f"SELECT * FROM {t}").fetchall()) for t in tables}  # noqa: S608


def constraints(databases: Databases, which: str = "target") -> list[tuple[Any, ...]]:
    with databases.connect(which) as conn:
        return conn.execute(
            "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE connamespace NOT IN ('pg_catalog'::regnamespace, 'information_schema'::regnamespace) ORDER BY 1, 2"
        ).fetchall()


def release_crashed_lock(migration_id: str = MIG, *, as_process: bool = False) -> str:
    """``sensei lock release MIGRATION_ID --force`` as a DBA would run it; the rollback whose lock it was.

    :param as_process: run the installed ``sensei`` console script (one test does, to cover the
        entry point); otherwise its ``main`` in this process, which spares a Python start-up and
        Airflow's imports (seconds of CPU) per call.
    """
    args = [
        "lock",
        "release",
        migration_id,
        "--force",
        "--reason",
        "its task was killed (chaos test)",
        "--actor",
        "Zoë the on-call DBA",
    ]
    if as_process:
        command = [str(Path(sys.executable).with_name("sensei")), *args]
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
        code, printed = done.returncode, done.stdout + done.stderr
    else:
        from sensei_airflow import cli

        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = cli.main(args)
        printed = out.getvalue()
    assert code == 0, printed
    assert printed.startswith(f"released the lock of {migration_id} held by rollback "), printed
    return printed.removeprefix(f"released the lock of {migration_id} held by rollback ").split(" (token")[0]


def staging(databases: Databases) -> list[tuple[str, str | None]]:
    """The staging tables on the source, with their comments."""
    with databases.connect("source") as conn:
        return conn.execute(
            "SELECT c.relname, obj_description(c.oid, 'pg_class') FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'sensei_staging' "
            "AND c.relname LIKE 'rev\\_%' ORDER BY 1"
        ).fetchall()


def task_error(run_id: str, task_id: str) -> str:
    """The error a task of a run recorded (XCom ``error``)."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = (
            session.query(XComModel)
            .filter_by(dag_id="sensei_rollback", run_id=run_id, task_id=task_id, key="error")
            .one_or_none()
        )
        assert row is not None, f"{task_id} of {run_id} recorded no error"
        return str(XComModel.deserialize_value(row)["error"])


def task_states(run_id: str) -> dict[str, str]:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        tis = session.query(TaskInstance).filter_by(dag_id="sensei_rollback", run_id=run_id).all()
        return {ti.task_id: str(ti.state) for ti in tis}
