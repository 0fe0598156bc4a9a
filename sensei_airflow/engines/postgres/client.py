"""The PostgreSQL programs the engine runs, and the credentials they get.

``psql``, ``pg_dump``, ``pg_restore`` and ``pg_basebackup`` reach the database with the same
credentials as the engine's own connections: :func:`connection_params` builds them exactly as
``PostgresHook.get_conn`` does (an IAM token when the connection's extra says ``iam``, every
extra the hook passes on to libpq, the hook's ``options``). A program gets them as a conninfo
string built by ``psycopg.conninfo.make_conninfo`` and, for the password, a passfile of its own
(mode 0600, removed when the program is done): never on its command line, never in the
environment (ADR 0007).

The server programs (``initdb``, ``pg_ctl``, ``pg_controldata``) are found the same way.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from psycopg.conninfo import make_conninfo

INSTALL_HINT = "install PostgreSQL (Debian/Ubuntu: apt-get install postgresql)"


class ToolMissing(RuntimeError):
    """A PostgreSQL program (psql, pg_dump, pg_restore, pg_basebackup, initdb, pg_ctl) is not installed."""


def find_program(name: str, bin_dir: str | os.PathLike[str] | None = None) -> Path:
    """The newest installed ``name``.

    Looked for in ``bin_dir`` when given, else ``SENSEI_PG_BINDIR``, then
    ``/usr/lib/postgresql/<version>/bin`` newest first, then ``PATH``.

    :raises ToolMissing: naming the program and how to install it.
    """
    if bin_dir:
        candidates = [str(bin_dir)]
    else:
        candidates = [os.environ["SENSEI_PG_BINDIR"]] if os.environ.get("SENSEI_PG_BINDIR") else []
        candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True)
    for folder in candidates:
        if (Path(folder) / name).is_file():
            return Path(folder) / name
    found = None if bin_dir else shutil.which(name)
    if found:
        return Path(found)
    where = f" in {bin_dir}" if bin_dir else ""
    raise ToolMissing(f"{name} not found{where}: {INSTALL_HINT}")


def _version_key(path: str) -> int:
    try:
        return int(Path(path).parent.name)
    except ValueError:
        return 0


def connection_params(hook: Any, **override: Any) -> dict[str, Any]:
    """The libpq keywords of the hook's connection, as ``PostgresHook.get_conn`` builds them.

    Host, port, user, password and database of the Airflow connection (the login, password and
    port replaced by an IAM token when its extra says ``iam``), the hook's ``options``, and every
    extra the hook passes to libpq (``sslmode``, ``sslrootcert``, ``options``, ...). Empty values
    are left out, so libpq's defaults apply as they do for the hook.

    :param hook: a ``PostgresHook``.
    :param override: keywords to set instead (``dbname`` of a scratch database, ...).
    """
    conn = deepcopy(hook.connection)
    if conn.extra_dejson.get("iam", False):
        conn.login, conn.password, conn.port = hook.get_iam_token(conn)
    params: dict[str, Any] = {
        "host": conn.host,
        "user": conn.login,
        "password": conn.password,
        "dbname": getattr(hook, "database", None) or conn.schema,
        "port": conn.port,
    }
    if getattr(hook, "options", None):
        params["options"] = hook.options
    ignored = set(getattr(hook, "ignored_extra_options", ()))
    params.update({k: v for k, v in conn.extra_dejson.items() if k not in ignored})
    params.update(override)
    return {k: v for k, v in params.items() if v is not None and v != ""}


@dataclass(frozen=True)
class ClientLogin:
    """How one program reaches the database: ``-d`` conninfo (no password) and its environment."""

    conninfo: str
    env: dict[str, str]


def passfile_line(password: str) -> str:
    """A ``.pgpass`` line that gives ``password`` for any host, port, database and user.

    ``\\`` and ``:`` are escaped as the passfile format requires; a line break cannot be written.

    :raises ValueError: for a password holding a line break.
    """
    if "\n" in password or "\r" in password:
        raise ValueError(
            "the connection's password holds a line break: PostgreSQL's programs cannot be given it"
        )
    escaped = password.replace("\\", "\\\\").replace(":", "\\:")
    return f"*:*:*:*:{escaped}\n"


@contextmanager
def client_login(hook: Any, **override: Any) -> Iterator[ClientLogin]:
    """Credentials for a PostgreSQL program, from the hook's connection, for as long as the block runs.

    The password goes to a temporary passfile (mode 0600) named by ``PGPASSFILE``, removed on
    exit; the worker's own ``PG*`` variables are not passed on (they would override the
    connection).

    :param hook: a ``PostgresHook``.
    :param override: libpq keywords to set instead (``dbname``, ...).
    """
    params = connection_params(hook, **override)
    password = params.pop("password", None)
    conninfo = make_conninfo(**{k: str(v) for k, v in params.items()})
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    if not password:
        yield ClientLogin(conninfo, env)
        return
    handle, name = tempfile.mkstemp(prefix="sensei-pgpass-")  # created 0600
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as passfile:
            passfile.write(passfile_line(str(password)))
        yield ClientLogin(conninfo, {**env, "PGPASSFILE": name})
    finally:
        os.unlink(name)


def run(args: Sequence[str], env: dict[str, str], what: str) -> str:
    """Run a program to completion; its output, or an error naming ``what`` with the end of its stderr."""
    result = subprocess.run(list(args), capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{what} failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
    return result.stdout
