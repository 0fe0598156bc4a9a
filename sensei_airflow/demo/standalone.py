"""Run ``airflow standalone`` as a child process: its environment, start, readiness, and a clean stop.

Used by the demo launcher (``make demo``) and by the end-to-end tests, so that both run
Airflow the same way. Facts this relies on:

- ``airflow standalone`` shuts its components down cleanly only on SIGINT (SIGTERM leaves
  the scheduler's and api-server's children behind). It is started in its own process group
  with SIGINT restored to the default handler, and stopped by sending SIGINT to that group,
  as a terminal's Ctrl-C would; whatever is left after a grace period is terminated.
- The SimpleAuthManager reads passwords from a JSON file: writing it before the start gives
  known logins (``username -> password``); roles come from ``[core] simple_auth_manager_users``.
- Tasks reach the api-server's execution API at ``[api] base_url``, which must name the port.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from sensei_airflow.airflow_api import AirflowApi, AirflowApiError

#: ``airflow standalone`` answers in 9-30 s on two idle cores; on a busy machine it can take minutes.
START_TIMEOUT = 600.0
#: SIGINT stops the api-server, dag processor and triggerer within seconds, but the scheduler waits
#: on its idle LocalExecutor workers indefinitely; after this long the group is terminated (waiting
#: longer only delayed every stop by the whole timeout).
STOP_TIMEOUT = 5.0
#: how long the rest of the group may take to exit after the leader did.
GROUP_GRACE = 10.0
#: a busy machine can keep the api-server from answering for tens of seconds.
HTTP_TIMEOUT = 120.0


@dataclass(frozen=True)
class Login:
    """A SimpleAuthManager user: ``role`` is one of viewer, user, op, admin."""

    username: str
    password: str
    role: str = "admin"


class AirflowNotReady(RuntimeError):
    """Airflow did not come up in time; the message carries the end of its log."""


def airflow_bin() -> str:
    """The ``airflow`` executable of the running interpreter's environment."""
    candidate = Path(sys.executable).with_name("airflow")
    return str(candidate) if candidate.exists() else "airflow"


def standalone_env(
    *,
    home: Path,
    dags_folder: Path,
    port: int,
    logins: Sequence[Login],
    extra: Mapping[str, str] | None = None,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment of an Airflow standalone on 127.0.0.1:``port`` with the given logins.

    Writes the passwords file into ``home``. ``extra`` (connections, ``SENSEI_MIGRATIONS_DIR``)
    is applied last.
    """
    home.mkdir(parents=True, exist_ok=True)
    passwords = home / "simple_auth_manager_passwords.json"
    passwords.write_text(json.dumps({login.username: login.password for login in logins}))
    passwords.chmod(0o600)
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ if base is None else base)
    bindir = str(Path(sys.executable).parent)
    if bindir not in env.get("PATH", "").split(os.pathsep):
        env["PATH"] = os.pathsep.join([bindir, env.get("PATH", "")])
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__AUTH_MANAGER": (
                "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
            ),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(f"{u.username}:{u.role}" for u in logins),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__BASE_URL": url,
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{url}/execution/",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        }
    )
    env.setdefault("AIRFLOW__API_AUTH__JWT_SECRET", os.urandom(48).hex())
    env.update(extra or {})
    return env


def _restore_sigint_then_exec() -> str:
    """Python source that resets SIGINT to its default (a background child ignores it) and execs."""
    return (
        "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
        "os.execvp(sys.argv[1], sys.argv[1:])"
    )


def spawn(
    command: Sequence[str], *, env: Mapping[str, str], log: IO[Any], cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start ``command`` in its own process group, SIGINT-able, output appended to ``log``."""
    return subprocess.Popen(
        [sys.executable, "-c", _restore_sigint_then_exec(), *command],
        env=dict(env),
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        cwd=cwd,
        start_new_session=True,
    )


def stop_group(process: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT) -> None:
    """SIGINT the process group (a terminal's Ctrl-C), wait, then terminate what is left."""
    if process.poll() is None or _group_alive(process.pid):
        _signal_group(process.pid, signal.SIGINT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.2)
        # the leader is gone (or out of time): stragglers get a short grace, then are terminated
        deadline = min(deadline, time.monotonic() + GROUP_GRACE)
        while time.monotonic() < deadline and _group_alive(process.pid):
            time.sleep(0.2)
    for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        if not _group_alive(process.pid) and process.poll() is not None:
            break
        _signal_group(process.pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and _group_alive(process.pid):
            time.sleep(0.2)
    if process.poll() is None:
        process.wait(timeout=5)


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie leader still counts until reaped: look for live members
    return any(_in_group(pid, pgid) for pid in _pids())


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()] if os.path.isdir("/proc") else []


def _in_group(pid: int, pgid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = stat.rsplit(")", 1)[1].split()
    return fields[0] != "Z" and int(fields[2]) == pgid


@dataclass
class StandaloneAirflow:
    """One ``airflow standalone`` on 127.0.0.1:``port``; ``env`` from :func:`standalone_env`."""

    env: dict[str, str]
    port: int
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    _log: IO[Any] | None = field(default=None, repr=False)
    #: the components whose health :meth:`wait_ready` waits for.
    components: tuple[str, ...] = ("metadatabase", "scheduler", "dag_processor", "triggerer")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def run(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        """Run an ``airflow`` CLI command in this environment (e.g. ``db migrate``)."""
        result = subprocess.run(
            [airflow_bin(), *args], env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )
        if result.returncode != 0:
            output = (result.stdout + result.stderr)[-4000:]
            raise RuntimeError(f"airflow {' '.join(args)} failed ({result.returncode}):\n{output}")
        return result

    def start(self) -> StandaloneAirflow:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = spawn([airflow_bin(), "standalone"], env=self.env, log=self._log)
        return self

    def api(self, login: Login | None = None) -> AirflowApi | None:
        """The REST client, logged in as ``login`` (default: the first admin; None without one)."""
        login = login or self.admin_login()
        if login is None:
            return None
        return AirflowApi(self.url, login.username, login.password, timeout=HTTP_TIMEOUT)

    def wait_ready(self, timeout: float = START_TIMEOUT, dag_ids: Sequence[str] = ()) -> None:
        """Wait until the api-server answers, its components are healthy and ``dag_ids`` are parsed."""
        import httpx

        deadline = time.monotonic() + timeout
        last = "no answer yet"
        anonymous = AirflowApi(self.url, None, None, timeout=HTTP_TIMEOUT)
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise AirflowNotReady(
                    f"airflow standalone exited ({self.process.returncode}):\n{self.log_tail()}"
                )
            try:
                health = anonymous.health()
                unhealthy = [
                    name for name in self.components if (health.get(name) or {}).get("status") != "healthy"
                ]
                if not unhealthy:
                    missing = [d for d in dag_ids if not self.dag_known(d)]
                    if not missing:
                        return
                    last = f"DAGs not parsed yet: {', '.join(missing)}"
                else:
                    last = f"not healthy yet: {', '.join(unhealthy)}"
            except (httpx.HTTPError, AirflowApiError, ValueError) as exc:
                last = f"{type(exc).__name__}: {exc}"
            time.sleep(1)
        raise AirflowNotReady(
            f"Airflow at {self.url} not ready after {timeout:.0f} s ({last}):\n{self.log_tail()}"
        )

    def dag_known(self, dag_id: str) -> bool:
        """Whether the api-server knows the DAG (asked with the first admin login)."""
        api = self.api()
        return True if api is None else api.dag_exists(dag_id)

    def admin_login(self) -> Login | None:
        users = self.env.get("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", "")
        passwords = json.loads(
            Path(self.env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]).read_text()
        )
        for item in users.split(","):
            name, _, role = item.partition(":")
            if role.lower() == "admin" and name in passwords:
                return Login(name, passwords[name], role)
        return None

    def auth_headers(self, username: str, password: str) -> dict[str, str]:
        """The ``Authorization`` header of a fresh token for this login."""
        api = self.api(Login(username, password))
        assert api is not None
        return api.headers()

    def unpause(self, dag_ids: Sequence[str], paused: bool = False) -> None:
        """Unpause (or with ``paused=True``, pause) these DAGs through the REST API."""
        api = self.api()
        if api is None:
            return
        for dag_id in dag_ids:
            api.set_paused(dag_id, paused)

    def dag_ids(self) -> list[str]:
        """Every DAG the api-server knows."""
        api = self.api()
        return [] if api is None else api.dag_ids()

    def log_tail(self, chars: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """Ctrl-C for the whole standalone, then terminate whatever did not exit."""
        if self.process is not None:
            stop_group(self.process)
        if self._log is not None:
            self._log.close()
            self._log = None
