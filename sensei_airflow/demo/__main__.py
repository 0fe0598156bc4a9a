"""``make demo``: local PostgreSQL source, target and state, the demo migration, and Airflow on :8080.

Steps (each reused across runs, so a second ``make demo`` starts in seconds):

1. three PostgreSQL clusters under ``/tmp/sensei-demo`` (a place the ``postgres`` OS user can
   enter): ``source`` (the shop), ``target`` (the warehouse; WAL archiving on, for
   point-in-time recovery) and ``state`` (run records, audit trail, backup catalog);
2. the demo manifest (``started_at`` = now) in ``.demo/migrations``, the connections as
   ``AIRFLOW_CONN_*`` variables, ``AIRFLOW_HOME`` in ``.demo/airflow``, and ``.demo/env`` to
   ``source`` in another shell;
3. ``airflow db migrate`` and the demo forward migration (``airflow dags test sensei_demo_migration``);
4. ``airflow standalone`` on http://127.0.0.1:8080 (login admin / admin) with the sensei DAGs
   unpaused; it prints the URL, the login and a curl line that starts a rollback.

Ctrl-C stops Airflow (SIGINT to its process group, as it needs) and the three clusters.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

from sensei_airflow.demo import shop
from sensei_airflow.demo.standalone import Login, StandaloneAirflow, spawn, standalone_env, stop_group
from sensei_airflow.engines.postgres.cluster import program
from sensei_airflow.local_postgres import LocalCluster, PostgresUnavailable

REPO = Path(__file__).resolve().parents[2]
DEMO_DIR = REPO / ".demo"
CLUSTERS_DIR = Path(os.environ.get("SENSEI_DEMO_PG_DIR", "/tmp/sensei-demo"))
LOGIN = Login("admin", "admin", "admin")
PORT = 8080
#: role -> (cluster port, database, Airflow connection id)
DATABASES = {
    "source": (54331, "shop", "shop_source"),
    "target": (54332, "warehouse", "shop_target"),
    "state": (54333, "sensei", "sensei_state"),
}
DEMO_DAGS = ("sensei_rollback", "sensei_demo_migration", "sensei_backup")


@dataclass
class Demo:
    """Where everything of the demo lives; the defaults are what ``make demo`` uses."""

    repo: Path = REPO
    demo_dir: Path = DEMO_DIR
    clusters_dir: Path = CLUSTERS_DIR
    port: int = PORT
    pg_ports: dict[str, int] = field(default_factory=lambda: {r: p for r, (p, _, _) in DATABASES.items()})

    @property
    def airflow_home(self) -> Path:
        return self.demo_dir / "airflow"

    @property
    def migrations_dir(self) -> Path:
        return self.demo_dir / "migrations"

    @property
    def wal_archive(self) -> Path:
        return self.clusters_dir / "target" / "wal_archive"

    @property
    def backups_dir(self) -> Path:
        return self.clusters_dir / "backups"

    def clusters(self) -> dict[str, LocalCluster]:
        target_settings = {
            "wal_level": "replica",
            "archive_mode": "on",
            "archive_command": f"test ! -f {self.wal_archive}/%f && cp %p {self.wal_archive}/%f",
            "full_page_writes": "on",
            "max_wal_senders": "4",
        }
        return {
            role: LocalCluster(
                self.clusters_dir / role,
                self.pg_ports[role],
                settings=target_settings if role == "target" else {},
            )
            for role in DATABASES
        }

    # -- setup steps ---------------------------------------------------------------------------
    def start_clusters(self) -> dict[str, LocalCluster]:
        """Start (creating on first use) the three clusters and their databases; returns them."""
        self.clusters_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.clusters_dir, 0o755)
        clusters = self.clusters()
        for role, cluster in clusters.items():
            cluster.init()
            if role == "target":
                _postgres_owned_dir(self.wal_archive)
            cluster.start()
            create_database_if_missing(cluster, DATABASES[role][1])
        _postgres_owned_dir(self.backups_dir)
        return clusters

    def connections(self) -> dict[str, str]:
        """``AIRFLOW_CONN_<ID>`` -> URI of each demo database."""
        clusters = self.clusters()
        return {
            f"AIRFLOW_CONN_{conn_id.upper()}": clusters[role].uri(database)
            for role, (_, database, conn_id) in DATABASES.items()
        }

    @property
    def base_backups(self) -> Path:
        return self.clusters_dir / "target" / "base_backups"

    def manifest(self) -> dict[str, Any]:
        """The demo manifest with ``started_at`` = now, and where its backups and WAL archive are."""
        manifest = shop.manifest(backup_location=self.backups_dir.as_uri())
        rollback = manifest["rollback"]
        rollback["fallback_strategy"] = "backup_restore"
        rollback["backup_before_start"] = True
        rollback["pre_migration_backup"] = {
            "enabled": True,
            "type": "logical",
            "storage": (self.backups_dir / "pre-migration").as_uri(),
            "retention_days": 7,
        }
        rollback["point_in_time"] = {
            "postgres": {"wal_archive": str(self.wal_archive), "base_backups": str(self.base_backups)}
        }
        return manifest

    def write_manifest(self) -> Path:
        """Write :meth:`manifest` (the rollback window opens now)."""
        self.migrations_dir.mkdir(parents=True, exist_ok=True)
        path = self.migrations_dir / f"{shop.DEMO_MIGRATION_ID}.yaml"
        path.write_text(yaml.safe_dump(self.manifest(), sort_keys=False))
        return path

    def reset_target(self) -> None:
        """An empty warehouse and a fresh base backup of it, so every demo run tells the story from the start.

        The base backup is what point-in-time recovery replays the archived WAL onto.
        """
        target = self.clusters()["target"]
        target.create_database(DATABASES["target"][1])
        self.forget_start_mark()
        _postgres_owned_dir(self.base_backups)
        name = time.strftime("base_%Y%m%dT%H%M%SZ", time.gmtime())
        run_as_postgres(
            [
                str(program("pg_basebackup")),
                "-h",
                "127.0.0.1",
                "-p",
                str(target.port),
                "-U",
                "postgres",
                "-D",
                str(self.base_backups / name),
                "-Fp",
                "-X",
                "stream",
                "-c",
                "fast",
            ]
        )

    def forget_start_mark(self) -> None:
        """The warehouse starts over: the previous run's start mark described a database that is gone."""
        import psycopg

        state = self.clusters()["state"]
        with psycopg.connect(state.dsn(DATABASES["state"][1]), autocommit=True) as conn:
            found = conn.execute("SELECT to_regclass('sensei.migration_marks')").fetchone()
            if found is not None and found[0] is not None:
                conn.execute(
                    "DELETE FROM sensei.migration_marks WHERE migration_id = %s", (shop.DEMO_MIGRATION_ID,)
                )

    def env(self) -> dict[str, str]:
        """Airflow's environment for every demo process (also written to ``.demo/env``)."""
        extra = {**self.connections(), "SENSEI_MIGRATIONS_DIR": str(self.migrations_dir)}
        extra["SENSEI_DEMO_WAL_ARCHIVE"] = str(self.wal_archive)
        extra["AIRFLOW__API_AUTH__JWT_SECRET"] = self._jwt_secret()
        return standalone_env(
            home=self.airflow_home,
            dags_folder=self.repo / "dags",
            port=self.port,
            logins=[LOGIN],
            extra=extra,
        )

    def _jwt_secret(self) -> str:
        """One secret per demo directory, kept across runs so tokens stay valid after a restart."""
        path = self.demo_dir / "jwt_secret"
        if not path.exists():
            self.demo_dir.mkdir(parents=True, exist_ok=True)
            path.write_text(os.urandom(48).hex())
            path.chmod(0o600)
        return path.read_text().strip()

    def write_env_file(self, env: dict[str, str]) -> Path:
        """``.demo/env``: ``source`` it to use the demo's Airflow from another shell."""
        keys = sorted(k for k in env if k.startswith(("AIRFLOW", "SENSEI_")))
        lines = [
            "# source this file to talk to the demo's Airflow: . .demo/env",
            *(f"export {k}={shlex.quote(env[k])}" for k in keys),
        ]
        lines.append(f'export PATH={shlex.quote(str(Path(sys.executable).parent))}:"$PATH"')
        path = self.demo_dir / "env"
        path.write_text("\n".join(lines) + "\n")
        return path

    def airflow(self, env: dict[str, str]) -> StandaloneAirflow:
        return StandaloneAirflow(env=env, port=self.port, log_path=self.demo_dir / "standalone.log")


def run_as_postgres(command: list[str]) -> None:
    """Run a PostgreSQL client tool as the ``postgres`` OS user when we are root (files it writes stay usable)."""
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    result = subprocess.run([*prefix, *command], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise PostgresUnavailable(f"{Path(command[0]).name} failed: {result.stderr.strip()}")


def port_free(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def create_database_if_missing(cluster: LocalCluster, name: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def _postgres_owned_dir(path: Path) -> None:
    """A directory the server (running as ``postgres`` when we are root) can write."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o755)
    if os.geteuid() == 0:
        import pwd

        owner = pwd.getpwnam("postgres")
        os.chown(path, owner.pw_uid, owner.pw_gid)


def curl_lines(url: str, login: Login) -> list[str]:
    token = (
        f"TOKEN=$(curl -s -X POST {url}/auth/token -H 'Content-Type: application/json' "
        f'-d \'{{"username": "{login.username}", "password": "{login.password}"}}\' '
        "| python3 -c 'import json,sys; print(json.load(sys.stdin)[\"access_token\"])')"
    )
    rollback = (
        f"curl -X POST {url}/sensei/v1/migrations/{shop.DEMO_MIGRATION_ID}/rollback "
        "-H \"Authorization: Bearer $TOKEN\" -H 'Content-Type: application/json' "
        '-d \'{"strategy": "truncate", "scope": "tables", "tables": ["orders", "order_items"]}\''
    )
    status = (
        f'curl -H "Authorization: Bearer $TOKEN" '
        f"{url}/sensei/v1/migrations/{shop.DEMO_MIGRATION_ID}/rollback/status"
    )
    return [token, rollback, status]


def banner(url: str, login: Login, env_file: Path) -> str:
    lines = [
        "",
        "=" * 78,
        f"  Sensei demo ready: {url}",
        f"  Login: {login.username} / {login.password}",
        f"  Trigger a rollback in the UI: {url}/dags/sensei_rollback, button Trigger (start with Dry run on)",
        "  Or with curl:",
        *(f"    {line}" for line in curl_lines(url, login)),
        f"  Airflow CLI in another shell: . {env_file}",
        "  Ctrl-C stops Airflow and the PostgreSQL clusters.",
        "=" * 78,
        "",
    ]
    return "\n".join(lines)


class Stop(Exception):
    """SIGTERM or SIGHUP: stop everything, as Ctrl-C does."""


def _raise_stop(signum: int, _frame: FrameType | None) -> None:
    raise Stop(signal.Signals(signum).name)


@contextmanager
def _stoppable() -> Iterator[None]:
    previous = {s: signal.signal(s, _raise_stop) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_step(title: str, command: list[str], env: dict[str, str], log: Path) -> None:
    """Run a setup command in its own process group (so Ctrl-C here stops it cleanly)."""
    print(f"- {title} ...", flush=True)
    started = time.monotonic()
    with open(log, "ab") as out:
        process = spawn(command, env=env, log=out)
        try:
            code = process.wait()
        except BaseException:
            stop_group(process, timeout=20)
            raise
    if code != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise SystemExit(f"{title} failed (exit {code}); end of {log}:\n{tail}")
    print(f"  done in {time.monotonic() - started:.0f} s", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sensei_airflow.demo", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--setup-only", action="store_true", help="prepare and migrate, do not start Airflow")
    parser.add_argument("--port", type=int, default=PORT, help="Airflow's port (default 8080)")
    parser.add_argument(
        "--demo-dir", type=Path, default=DEMO_DIR, help="Airflow home, manifest, logs (.demo)"
    )
    parser.add_argument(
        "--pg-dir", type=Path, default=CLUSTERS_DIR, help="the PostgreSQL clusters' directory"
    )
    parser.add_argument(
        "--pg-ports",
        default=",".join(str(p) for p, _, _ in DATABASES.values()),
        help="ports of the source, target and state clusters (default 54331,54332,54333)",
    )
    args = parser.parse_args(argv)
    ports = [int(p) for p in args.pg_ports.split(",")]
    if len(ports) != len(DATABASES):
        parser.error("--pg-ports needs three ports: source,target,state")
    demo = Demo(
        demo_dir=args.demo_dir.resolve(),
        clusters_dir=args.pg_dir.resolve(),
        port=args.port,
        pg_ports=dict(zip(DATABASES, ports, strict=True)),
    )
    if not args.setup_only and not port_free(demo.port):
        raise SystemExit(f"port {demo.port} is in use: stop what listens there, or pass --port")
    demo.demo_dir.mkdir(parents=True, exist_ok=True)
    log = demo.demo_dir / "setup.log"
    clusters: dict[str, LocalCluster] = {}
    airflow: StandaloneAirflow | None = None
    try:
        with _stoppable():
            print(
                f"- PostgreSQL clusters (source, target with WAL archiving, state) in {demo.clusters_dir} ..."
            )
            try:
                clusters = demo.start_clusters()
            except PostgresUnavailable as exc:
                raise SystemExit(f"cannot start PostgreSQL: {exc}") from None
            print("- fresh target database and a base backup of it (for point-in-time recovery) ...")
            demo.reset_target()
            manifest = demo.write_manifest()
            print(f"- demo manifest: {manifest}")
            env = demo.env()
            env_file = demo.write_env_file(env)
            airflow = demo.airflow(env)
            from sensei_airflow.demo.standalone import airflow_bin

            run_step("airflow db migrate", [airflow_bin(), "db", "migrate"], env, log)
            run_step(
                "demo migration (airflow dags test sensei_demo_migration)",
                [airflow_bin(), "dags", "test", "sensei_demo_migration"],
                env,
                log,
            )
            if args.setup_only:
                print(f"Set up. Environment: . {env_file}")
                return 0
            print(f"- starting airflow standalone on {airflow.url} (log: {airflow.log_path}) ...", flush=True)
            airflow.start()
            airflow.wait_ready(dag_ids=["sensei_rollback", "sensei_demo_migration"])
            airflow.unpause([d for d in DEMO_DAGS if airflow.dag_known(d)])
            print(banner(airflow.url.replace("127.0.0.1", "localhost"), LOGIN, env_file), flush=True)
            while airflow.process is not None and airflow.process.poll() is None:
                time.sleep(1)
            print(
                f"airflow standalone exited ({airflow.process.returncode if airflow.process else '?'}); "
                f"see {airflow.log_path}"
            )
            return 1
    except (KeyboardInterrupt, Stop):
        print("\nStopping ...", flush=True)
        return 0
    finally:
        if airflow is not None:
            airflow.stop()
        if clusters and not args.setup_only:
            for cluster in clusters.values():
                cluster.stop()
            print("Stopped Airflow and the PostgreSQL clusters.", flush=True)


if __name__ == "__main__":
    # A process started in the background ignores SIGINT; the demo must answer Ctrl-C.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.exit(main())
