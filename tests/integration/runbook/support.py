"""Real servers for the runbook tests: an SMTP server, a webhook receiver and an Airflow api-server.

The api-server runs in a child process on the tests' own metadata database (the same
``AIRFLOW_HOME``), so DAGs synced by the test and runs started by ``dag.test`` in the test
process are the ones it pauses and answers about.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from sensei_airflow.local_postgres import free_port

API_USER = ("sensei_admin", "sensei-admin-pw")


# -- SMTP ----------------------------------------------------------------------------------------
@dataclass
class MailBox:
    port: int
    messages: list[dict[str, Any]] = field(default_factory=list)

    def wait_for(self, count: int, timeout: float = 120) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.messages) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return list(self.messages)


@pytest.fixture
def smtp_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[MailBox]:
    """A local SMTP server (aiosmtpd) as connection ``ops_smtp``; received mails in ``.messages``."""
    from email import message_from_bytes, policy

    from aiosmtpd.controller import Controller

    box = MailBox(port=free_port())

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            message = message_from_bytes(envelope.content, policy=policy.default)
            body = message.get_body(preferencelist=("html", "plain"))
            box.messages.append(
                {
                    "from": envelope.mail_from,
                    "to": list(envelope.rcpt_tos),
                    "subject": str(message["subject"]),
                    "headers": dict(message.items()),
                    "body": body.get_content() if body is not None else "",
                }
            )
            return "250 OK"

    controller = Controller(Handler(), hostname="127.0.0.1", port=box.port)
    controller.start()
    monkeypatch.setenv(
        "AIRFLOW_CONN_OPS_SMTP",
        json.dumps(
            {
                "conn_type": "smtp",
                "host": "127.0.0.1",
                "port": box.port,
                "extra": {
                    "disable_tls": True,
                    "disable_ssl": True,
                    "from_email": "sensei@example.com",
                    "timeout": 10,
                    "retry_limit": 0,
                },
            }
        ),
    )
    monkeypatch.setenv("AIRFLOW__SENSEI__NOTIFY_RETRY_DELAY_SECONDS", "0")
    try:
        yield box
    finally:
        controller.stop()


# -- webhook -------------------------------------------------------------------------------------
@dataclass
class WebhookReceiver:
    port: int
    events: list[dict[str, Any]] = field(default_factory=list)
    #: answer HTTP 503 to this many requests first (a flaky channel)
    fail_first: int = 0
    requests: int = 0
    #: the body of a successful answer (HTTP 200 with it; none: 204), e.g. Slack's ``{"ok": true}``
    reply: bytes = b""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
def webhook_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[WebhookReceiver]:
    """A local HTTP server as connection ``ops_webhook`` (endpoint ``/hooks/sensei``)."""
    receiver = WebhookReceiver(port=0)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            receiver.requests += 1
            if receiver.requests <= receiver.fail_first:
                self.send_response(503)
                self.end_headers()
                return
            receiver.events.append(
                {
                    "path": self.path,
                    "content_type": self.headers.get("Content-Type"),
                    "headers": dict(self.headers.items()),
                    "json": json.loads(body),
                }
            )
            if receiver.reply:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(receiver.reply)))
                self.end_headers()
                self.wfile.write(receiver.reply)
                return
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv(
        "AIRFLOW_CONN_OPS_WEBHOOK",
        json.dumps(
            {
                "conn_type": "http",
                "host": "127.0.0.1",
                "port": receiver.port,
                "schema": "http",
                "extra": {"endpoint": "/hooks/sensei"},
            }
        ),
    )
    monkeypatch.setenv("AIRFLOW__SENSEI__NOTIFY_RETRY_DELAY_SECONDS", "0")
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()


# -- Airflow api-server --------------------------------------------------------------------------
@dataclass
class ApiServer:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def client(self) -> httpx.Client:
        token = httpx.post(
            f"{self.url}/auth/token", json={"username": API_USER[0], "password": API_USER[1]}, timeout=30
        ).json()["access_token"]
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=60)

    def connection_env(self) -> str:
        return json.dumps(
            {"conn_type": "http", "host": self.url, "login": API_USER[0], "password": API_USER[1]}
        )


def _stop(process: subprocess.Popen[bytes]) -> None:
    for sig, grace in ((signal.SIGINT, 20.0), (signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        if process.poll() is not None:
            return
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="session")
def api_server(airflow_db: None) -> Iterator[ApiServer]:
    """``airflow api-server`` on the tests' metadata database, with a known login."""
    home = Path(tempfile.mkdtemp(prefix="sensei-runbook-api-"))
    passwords = home / "passwords.json"
    passwords.write_text(json.dumps({API_USER[0]: API_USER[1]}))
    port = free_port()
    env = dict(os.environ)
    env.update(
        {
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{API_USER[0]}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        }
    )
    log_path = home / "api-server.log"
    log = open(log_path, "ab")  # noqa: SIM115 - closed below
    airflow = str(Path(sys.executable).with_name("airflow"))
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execvp(sys.argv[1], sys.argv[1:])",
            airflow,
            "api-server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--apps",
            "core",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    server = ApiServer(f"http://127.0.0.1:{port}", process, log_path)
    deadline = time.monotonic() + 180
    try:
        while True:
            if process.poll() is not None:
                pytest.fail(f"airflow api-server exited:\n{log_path.read_text()[-3000:]}", pytrace=False)
            try:
                if httpx.get(f"{server.url}/api/v2/monitor/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(
                    f"airflow api-server did not answer:\n{log_path.read_text()[-3000:]}", pytrace=False
                )
            time.sleep(0.5)
        yield server
    finally:
        _stop(process)
        log.close()
        shutil.rmtree(home, ignore_errors=True)


def sync_dags(folder: Path) -> list[str]:
    """Parse the DAG files of ``folder`` and store them (and their Assets) in the metadata DB."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db
    from airflow.utils.session import create_session

    with create_session() as session:
        DagBundlesManager().sync_bundles_to_db(session=session)
    bag = DagBag(dag_folder=str(folder))
    assert not bag.import_errors, bag.import_errors
    sync_bag_to_db(bag, "dags-folder", None)
    return list(bag.dags)


def set_paused(dag_ids: dict[str, bool]) -> None:
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session

    with create_session() as session:
        for dag_id, paused in dag_ids.items():
            session.query(DagModel).filter(DagModel.dag_id == dag_id).update({"is_paused": paused})


def paused(dag_ids: list[str]) -> dict[str, bool]:
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session

    with create_session() as session:
        return {
            m.dag_id: bool(m.is_paused) for m in session.query(DagModel).filter(DagModel.dag_id.in_(dag_ids))
        }


# -- manifests and downstream DAGs ----------------------------------------------------------------
def write_manifest(migrations_dir: Path, **rollback: Any) -> dict[str, Any]:
    """The demo manifest with ``downstream``/``notify`` (keys starting so) and rollback options."""
    import yaml

    from sensei_airflow.demo import shop

    document = shop.manifest()
    for key in ("downstream", "notify"):
        if key in rollback:
            document[key] = rollback.pop(key)
    document["rollback"].update(rollback)
    (migrations_dir / f"{document['id']}.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    return document


CONSUMER_DAGS = """
from datetime import datetime

from airflow.sdk import DAG, Asset
from airflow.providers.standard.operators.empty import EmptyOperator

for dag_id, schedule in (
    ("consumer_daily", "@daily"),
    ("consumer_paused", "@daily"),
    ("consumer_on_orders", [Asset("{orders_uri}")]),
    ("bystander", "@daily"),
):
    with DAG(dag_id, schedule=schedule, start_date=datetime(2026, 1, 1), catchup=False) as dag:
        EmptyOperator(task_id="read")
    globals()[dag_id] = dag
"""


def consumer_dags(folder: Path, orders_uri: str) -> list[str]:
    """Four DAGs in the metadata DB: two named in the manifest, one on the orders Asset, one unrelated.

    ``consumer_paused`` is paused beforehand; the others are active.
    """
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "consumers.py").write_text(CONSUMER_DAGS.replace("{orders_uri}", orders_uri))
    ids = sync_dags(folder)
    set_paused({dag_id: dag_id == "consumer_paused" for dag_id in ids})
    return ids


class PauseWatcher:
    """Polls the api-server for the paused flag of some DAGs while a rollback runs."""

    def __init__(self, server: ApiServer, dag_ids: list[str]) -> None:
        self.server = server
        self.dag_ids = dag_ids
        self.seen: dict[str, set[bool]] = {d: set() for d in dag_ids}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        with self.server.client() as client:
            while not self._stop.is_set():
                for dag_id in self.dag_ids:
                    response = client.get(f"/api/v2/dags/{dag_id}")
                    if response.status_code == 200:
                        self.seen[dag_id].add(response.json()["is_paused"])
                time.sleep(0.05)

    def __enter__(self) -> PauseWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
